"""Data loading (every format and schema), malformed rows, truncation policy, collators."""
from __future__ import annotations

import json

import pytest
import torch

from inform_fast import data
from inform_fast.tiny import tiny_tokenizer

ROWS = [
    {"prompt": "hello question", "chosen": " good answer", "rejected": " bad answer"},
    {"prompt": "please help", "chosen": " yes great", "rejected": " no"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_formats_give_the_same_pairs(tmp_path, tok):
    pytest.importorskip("pyarrow")
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    expected = data.load_preference_data(jsonl, tok)
    for name in ("d.json", "d.parquet", "ds"):
        assert data.load_preference_data(tmp_path / name, tok) == expected, name
        assert data.count_records(tmp_path / name) == len(ROWS), name
    hello, question, good, answer, eos = (tok.convert_tokens_to_ids(w) for w in ("hello", "question", "good", "answer", "<eos>"))
    assert expected[0]["chosen_ids"] == [hello, question, good, answer, eos]
    assert expected[1]["rejected_ids"][-1] == eos


def test_implicit_prompt_and_margin(tmp_path, tok):
    rows = [{"chosen": "hello good", "rejected": "hello bad", "margin": 0.5}]
    pairs = data.load_preference_data(write_jsonl(tmp_path / "d.jsonl", rows), tok)
    assert pairs[0]["margin"] == 0.5
    assert tok.convert_ids_to_tokens(pairs[0]["chosen_ids"]) == ["hello", "good", "<eos>"]


def test_eos_not_doubled(tmp_path, tok):
    rows = [{"chosen": "good <eos>", "rejected": "bad"}]
    pairs = data.load_preference_data(write_jsonl(tmp_path / "d.jsonl", rows), tok)
    assert pairs[0]["chosen_ids"].count(tok.eos_token_id) == 1
    assert pairs[0]["rejected_ids"][-1] == tok.eos_token_id


def test_conversational_uses_chat_template(tmp_path, tok):
    rows = [
        {"chosen": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "bad"}]},
        {"prompt": [{"role": "user", "content": "hello"}],
         "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
    ]
    pairs = data.load_preference_data(write_jsonl(tmp_path / "c.jsonl", rows), tok)
    # the template's own tokens, as apply_chat_template(tokenize=True) and TRL give them: no EOS added
    assert pairs[0]["chosen_ids"] == list(tok.apply_chat_template(rows[0]["chosen"], tokenize=True, return_dict=True)["input_ids"])
    assert pairs[0] == pairs[1]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": "good"}, "missing column 'rejected'"),
        ({"chosen": "good", "rejected": 3}, "column 'rejected' must be a string"),
        ({"chosen": "  ", "rejected": "bad"}, "column 'chosen' is empty"),
        ({"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "x"}]}, "message 1"),
        ({"chosen": "a", "rejected": "b", "margin": "big"}, "margin"),
        (["chosen", "rejected"], "expected an object"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, tok, row, message):
    path = tmp_path / "bad.jsonl"
    # line 1 good, line 2 blank (still counted), line 3 malformed
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl: row 3: .*{message}"):
        data.load_preference_data(path, tok)


def test_malformed_json_and_parquet_rows(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: invalid JSON"):
        data.load_preference_data(bad, tok)
    (tmp_path / "bad.json").write_text(json.dumps([ROWS[0], {"chosen": "x"}]))
    with pytest.raises(ValueError, match=r"bad\.json: row 2: missing column 'rejected'"):
        data.load_preference_data(tmp_path / "bad.json", tok)
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([ROWS[0], {**ROWS[1], "chosen": ""}]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: row 2: column 'chosen' is empty"):
        data.load_preference_data(tmp_path / "bad.parquet", tok)


def test_bad_paths_and_arguments(tmp_path, tok):
    with pytest.raises(FileNotFoundError):
        data.load_preference_data(tmp_path / "none.jsonl", tok)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        data.load_preference_data(tmp_path / "d.txt", tok)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        data.load_preference_data(tmp_path / "empty.jsonl", tok)
    with pytest.raises(ValueError, match="truncation"):
        data.load_preference_data(write_jsonl(tmp_path / "d.jsonl", ROWS), tok, truncation="left")


def test_truncation_keeps_prompt_end_and_final_eos():
    # BOS=2, prompt 10..15, response 20..23 + EOS 3
    ids = [2, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 3]
    assert data.truncate_sequence(ids, 7, None, 2) == ids
    assert data.truncate_sequence(ids, 7, 9, 2) == [2, 13, 14, 15, 20, 21, 22, 23, 3]
    # prompt exhausted: response cut from the right, EOS kept
    assert data.truncate_sequence(ids, 7, 4, 2) == [2, 20, 21, 3]
    assert data.truncate_sequence(ids, 7, 2, None) == [20, 3]
    for max_length in range(2, len(ids) + 1):
        out = data.truncate_sequence(ids, 7, max_length, 2)
        assert len(out) == max_length and out[-1] == 3


def test_truncation_modes_on_a_file(tmp_path, tok):
    rows = [{"prompt": "one two three four five", "chosen": " good", "rejected": " bad bad bad"}, ROWS[1]]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    pairs, report = data.load_preference_data(path, tok, max_length=5, return_report=True)
    assert report.truncated == 1 and report.kept == 2
    assert tok.convert_ids_to_tokens(pairs[0]["chosen_ids"]) == ["three", "four", "five", "good", "<eos>"]
    assert tok.convert_ids_to_tokens(pairs[0]["rejected_ids"]) == ["five", "bad", "bad", "bad", "<eos>"]
    pairs, report = data.load_preference_data(path, tok, max_length=5, truncation="drop", return_report=True)
    assert report.dropped == 1 and len(pairs) == 1
    with pytest.raises(ValueError, match="dropped"):
        data.load_preference_data(path, tok, max_length=2, truncation="drop")


def test_pair_collator_pads_to_common_length():
    examples = [{"chosen_ids": [5, 6, 7], "rejected_ids": [8], "margin": 1.0},
                {"chosen_ids": [9], "rejected_ids": [1, 2, 3, 4], "margin": 0.0}]
    batch = data.PairCollator(pad_token_id=0)(examples)
    assert batch["chosen_input_ids"].tolist() == [[5, 6, 7, 0], [9, 0, 0, 0]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    assert batch["margin"].tolist() == [1.0, 0.0]
    left = data.PairCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=8)(examples)
    assert left["chosen_input_ids"].shape == (2, 8)
    assert left["chosen_input_ids"][0, -3:].tolist() == [5, 6, 7]
    assert left["chosen_attention_mask"][0].sum() == 3


def test_packed_collator_layout():
    pytest.importorskip("inform_fast.packing")
    examples = [{"chosen_ids": [5, 6, 7], "rejected_ids": [8]}, {"chosen_ids": [9], "rejected_ids": [1, 2]}]
    batch = data.PackedPairCollator()(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 8, 1, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 0, 1]]
    assert batch["num_pairs"] == 2


def test_streaming_and_length_sorted_batches(tmp_path, tok):
    rows = [{"prompt": "hello", "response": " good " * (i % 5 + 1)} for i in range(23)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert data.count_records(path) == 23
    items = list(data.stream_tokenized(path, tok, field="response", max_length=4))
    assert [i for i, _ in items] == list(range(23))
    assert all(len(ids) <= 4 and ids[-1] == tok.eos_token_id for _, ids in items)
    batches = list(data.length_sorted_batches(iter(items), batch_size=4, window=2))
    assert sorted(i for b in batches for i, _ in b) == list(range(23))
    assert max(len(b) for b in batches) == 4
    assert all(len(b[0][1]) <= len(b[-1][1]) for b in batches)
    with pytest.raises(ValueError, match=r"s2\.jsonl: row 2: missing column 'response'"):
        write_jsonl(tmp_path / "s2.jsonl", [rows[0], {"prompt": "x"}])
        list(data.stream_tokenized(tmp_path / "s2.jsonl", tok))
