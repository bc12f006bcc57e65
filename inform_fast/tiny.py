"""Tiny offline assets for tests, examples and CPU benchmarks: a word-level tokenizer with a chat
template, a tiny random Llama backbone and a tiny causal-LM policy, built from code (no downloads)."""
from __future__ import annotations

import os
from typing import Iterable, Optional

WORDS = (
    "good bad great awful fine poor yes no the a is it was answer question please help thanks "
    "user assistant system : , . ! ? hello world cat dog red blue green one two three four five"
).split()
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"


def tiny_tokenizer(extra_words: Iterable[str] = ()):
    """A ``PreTrainedTokenizerFast`` over a fixed word list (unknown words map to ``<unk>``),
    whitespace/punctuation pre-tokenisation, pad/unk/bos/eos tokens, no special tokens added on
    encode, and a chat template rendering ``role : content .`` per message."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in list(WORDS) + list(extra_words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(vocab_size: int, hidden_size: int, layers: int, **overrides):
    """A small ``LlamaConfig`` (4 heads, 2 key/value heads, 256 positions); ``overrides`` are
    ``LlamaConfig`` fields and replace any of these defaults."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_llama(vocab_size: int, hidden_size: int = 32, layers: int = 2, seed: Optional[int] = 0, **overrides):
    """A random ``LlamaModel`` backbone (2 layers, hidden 32, 4 heads, 2 key/value heads by default);
    ``overrides`` are ``LlamaConfig`` fields and replace any of these defaults. The weights are drawn
    after ``torch.manual_seed(seed)`` (no reseeding when ``seed`` is None)."""
    import torch
    from transformers import LlamaModel

    if seed is not None:
        torch.manual_seed(seed)
    return LlamaModel(_tiny_llama_config(vocab_size, hidden_size, layers, **overrides))


def tiny_causal_llama(vocab_size: int, hidden_size: int = 32, layers: int = 1, seed: Optional[int] = 0):
    """A random ``LlamaForCausalLM`` (1 layer, hidden 32): a policy for RL recipes on the CPU."""
    import torch
    from transformers import LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_llama_config(vocab_size, hidden_size, layers))


def save_tiny_backbone(directory: str | os.PathLike, hidden_size: int = 32, layers: int = 2) -> str:
    """Save a tiny random Llama backbone and the tiny tokenizer into ``directory``; returns it."""
    directory = str(directory)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=hidden_size, layers=layers)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
