"""Preference and scoring data: file readers, tokenisation, truncation policy, collators.

Files: JSONL (one object per line), JSON (a list of objects), Parquet, or a folder written by
``datasets.Dataset.save_to_disk``. Row schemas (the same ones TRL's RewardTrainer accepts):

* explicit prompt:   ``{"prompt": str, "chosen": str, "rejected": str}``
* implicit prompt:   ``{"chosen": str, "rejected": str}`` (the prompt is the shared text)
* conversational:    ``chosen`` / ``rejected`` (and optionally ``prompt``) are lists of
  ``{"role": str, "content": str}`` messages, rendered with the tokenizer's chat template.

An optional numeric ``margin`` column is kept. A malformed row (missing column, wrong type,
empty text, unparsable JSON line) raises ``ValueError`` naming the file and the row
(JSONL: the 1-based line number; JSON: 1-based position in the list; Parquet / datasets: 1-based
row index).

Tokenisation (``tokenize_sequence``, the one function behind training, ``inform-fast score`` and
the reward functions, and what TRL's RewardTrainer does):

* text (prompt + response): tokenised with the tokenizer's special tokens, the EOS id appended
  when the sequence does not already end with it, so the pooled (last) token is EOS; a text that
  already starts with the tokenizer's BOS does not get a second one;
* conversations (message lists): the chat template's rendering of prompt + response, tokenised
  without adding special tokens (the template writes its own) and without an appended EOS (the
  template ends the conversation its own way), as ``apply_chat_template(..., tokenize=True)``.

Truncation policy (``max_length``), ``truncation="truncate"`` (default), per sequence:

1. the prompt is the token prefix shared by chosen and rejected (or the explicit prompt);
2. if the sequence is longer than ``max_length``, tokens are dropped from the *start of the
   prompt* (keeping its leading special tokens, whatever their names: BOS, BERT's [CLS], a
   template's begin-of-text), i.e. the end of the prompt, nearest the response, is kept;
3. if the response alone still does not fit, it is cut from the right but its final token is
   kept: ``response[:room - 1] + [last]``, so the pooled token is still the end of the sequence
   (EOS, [SEP], a template's end of turn).

``truncation="drop"`` instead drops pairs where either sequence exceeds ``max_length`` (TRL's
behaviour) and ``load_preference_data`` reports how many were dropped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from inform_fast.validation import check_real, require

TRUNCATION_MODES = ("truncate", "drop")
_PARQUET_SUFFIXES = (".parquet", ".pq")


# ---------------------------------------------------------------------------------------------
# raw readers


def _file_kind(path: Path) -> str:
    if path.is_dir():
        return "datasets"
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(
        f"data: cannot tell the format of {path} from its name; use .jsonl, .json, .parquet or a "
        "datasets.save_to_disk folder"
    )


def jsonl_lines(path: str | os.PathLike) -> Iterator[Tuple[int, str]]:
    """``(line_number, text)`` of every non-blank line of a JSONL file, lazily: the one line
    splitter of every JSONL reader (``iter_records``, ``count_records``), so that counting and
    reading agree. Lines end at ``\n``, ``\r\n`` or a bare ``\r`` (JSON escapes these inside
    strings, so they only ever end lines); a line is blank when ``str.isspace`` says so (also a
    no-break space or a lone ``\x1c``). A UTF-8 byte order mark is skipped."""
    path = Path(path)
    line_number = 0
    try:
        with open(path, "r", encoding="utf-8-sig", newline=None) as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    yield line_number, line
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: line {line_number + 1}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _parquet(path: Path):
    return require("pyarrow.parquet", f"{path}: reading a .parquet file", "data")


def _load_from_disk(path: Path):
    datasets = require("datasets", f"{path}: reading a datasets.save_to_disk folder", "data")
    try:
        return datasets, datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError / its own errors
        raise ValueError(f"{path}: not a datasets.save_to_disk folder ({error})") from None


def iter_records(path: str | os.PathLike) -> Iterator[Tuple[int, Any]]:
    """Yield ``(row_number, record)`` lazily; row numbers are 1-based (JSONL: line numbers).

    JSONL is read line by line and Parquet by record batches, so memory stays bounded for files
    with millions of rows. A JSON list file is parsed whole (the format allows nothing else).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data: {path} does not exist")
    kind = _file_kind(path)
    if kind == "jsonl":
        for line_number, line in jsonl_lines(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number}: invalid JSON ({error.msg})") from None
            yield line_number, record
    elif kind == "json":
        with open(path, "r", encoding="utf-8") as handle:
            try:
                records = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: invalid JSON at line {error.lineno} ({error.msg})") from None
        if isinstance(records, dict) and "data" in records and isinstance(records["data"], list):
            records = records["data"]
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        for index, record in enumerate(records, start=1):
            yield index, record
    elif kind == "parquet":
        parquet = _parquet(path).ParquetFile(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    else:
        datasets, dataset = _load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise ValueError(f"{path}: a DatasetDict without a 'train' split ({list(dataset.keys())})")
            dataset = dataset["train"]
        for index, record in enumerate(dataset, start=1):
            yield index, record


def count_records(path: str | os.PathLike) -> int:
    """Number of rows without parsing them (JSONL: non-blank lines; Parquet: footer metadata)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data: {path} does not exist")
    kind = _file_kind(path)
    if kind == "jsonl":
        return sum(1 for _ in jsonl_lines(path))
    if kind == "parquet":
        return _parquet(path).ParquetFile(path).metadata.num_rows
    if kind == "datasets":
        datasets, dataset = _load_from_disk(path)
        return len(dataset["train"] if isinstance(dataset, datasets.DatasetDict) and "train" in dataset else dataset)
    return sum(1 for _ in iter_records(path))


# ---------------------------------------------------------------------------------------------
# rendering and tokenisation


def _where(path, row) -> str:
    return f"{path}: row {row}"


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _check_messages(value, column: str, where: str) -> None:
    if len(value) == 0:
        raise ValueError(f"{where}: column '{column}' is an empty message list")
    for position, message in enumerate(value, start=1):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError(
                f"{where}: column '{column}' message {position} needs string 'role' and 'content' fields"
            )


def _check_text(value, column: str, where: str) -> None:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: column '{column}' is empty")
        return
    if _is_messages(value):
        _check_messages(value, column, where)
        return
    raise ValueError(
        f"{where}: column '{column}' must be a string or a list of {{role, content}} messages, "
        f"got {type(value).__name__}"
    )


def _render_chat(tokenizer, messages: List[dict], where: str, add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{where}: conversational row but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_text(tokenizer, prompt, response, where: str = "data") -> str:
    """Text of one sequence: ``prompt + response`` for strings; for messages, the chat-template
    rendering of ``prompt + response`` (a message list)."""
    if _is_messages(response):
        messages = list(prompt or []) + list(response)
        if prompt is not None and not _is_messages(prompt):
            raise ValueError(f"{where}: prompt is a string but the response is a message list")
        return _render_chat(tokenizer, messages, where)
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: prompt is a message list but the response is a string")
    return (prompt or "") + response


def encode(tokenizer, text: str) -> List[int]:
    """Token ids of a plain ``text`` with the tokenizer's special tokens and a final EOS (appended
    only when the tokenizer did not put one there), as TRL's RewardTrainer tokenises text.

    A text that already begins with the tokenizer's leading special token (a prompt rendered by a
    chat template, or OpenRLHF's queries, decoded with their special tokens) keeps just that one:
    the tokenizer's own is not added a second time."""
    ids = _encode_text(tokenizer, text)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def _encode_text(tokenizer, text: str) -> List[int]:
    """``encode`` without the EOS it appends."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if len(ids) >= 2 and ids[0] == ids[1] and ids[0] in set(tokenizer.all_special_ids):
        bare = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(bare) and bare[0] == ids[0]:  # the text wrote it: drop the added copy
            ids = ids[1:]
    return ids


def encode_conversation(tokenizer, messages: List[dict], where: str = "data", add_generation_prompt: bool = False) -> List[int]:
    """Token ids of a conversation: the chat template's rendering, tokenised without adding
    special tokens (a template writes its own: BOS, end-of-turn markers). This is what
    ``tokenizer.apply_chat_template(messages, tokenize=True)`` and TRL's RewardTrainer give; no EOS
    is appended, the template ends the conversation its own way."""
    return list(tokenizer(_render_chat(tokenizer, messages, where, add_generation_prompt), add_special_tokens=False)["input_ids"])


def tokenize_sequence(tokenizer, prompt, response, where: str = "data") -> List[int]:
    """The one tokenisation of ``prompt + response`` for training, scoring and the reward
    functions: ``encode_conversation(prompt + response)`` for message lists, ``encode(prompt +
    response)`` for strings (``prompt`` may be None)."""
    if _is_messages(response):
        if prompt is not None and not _is_messages(prompt):
            raise ValueError(f"{where}: prompt is a string but the response is a message list")
        return encode_conversation(tokenizer, list(prompt or []) + list(response), where)
    return encode(tokenizer, render_text(tokenizer, prompt, response, where))


def prompt_length(tokenizer, prompt, ids: Sequence[int], where: str = "data") -> int:
    """How many leading tokens of ``ids`` (``tokenize_sequence(prompt, response)``) the prompt
    makes: the common prefix with the prompt tokenised alone (messages: with the template's
    generation prompt; text: without the EOS that ``encode`` would append)."""
    if not prompt:
        return 0
    if _is_messages(prompt):
        alone = encode_conversation(tokenizer, list(prompt), where, add_generation_prompt=True)
    else:
        alone = _encode_text(tokenizer, prompt)
    return common_prefix_length(alone, ids)


def tokenize_example(tokenizer, prompt, response, max_length: Optional[int] = None, where: str = "data") -> List[int]:
    """``tokenize_sequence`` truncated to ``max_length`` by the module's policy (what scoring
    and the reward functions run; training applies the same policy to each pair)."""
    ids = tokenize_sequence(tokenizer, prompt, response, where)
    if max_length is not None and len(ids) > max_length:
        ids = truncate_sequence(ids, prompt_length(tokenizer, prompt, ids, where), max_length,
                                special_ids=tokenizer.all_special_ids)
    return ids


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def truncate_sequence(ids: List[int], prompt_length: int, max_length: Optional[int], bos_token_id: Optional[int] = None,
                      special_ids: Sequence[int] = ()) -> List[int]:
    """Apply the module's truncation policy to one sequence of ``prompt_length`` prompt tokens
    followed by the response. Returns at most ``max_length`` ids.

    The leading run of special tokens (``bos_token_id`` or any of ``special_ids``: BOS, BERT's
    [CLS], a template's begin-of-text) is kept whatever their names, and so is the final token
    (EOS, [SEP], a template's end of turn): the reward is read there."""
    if max_length is None or len(ids) <= max_length:
        return list(ids)
    if max_length < 1:
        raise ValueError(f"max_length: must be >= 1, got {max_length}")
    # A single response token must stay at the end even when prompt_length covers everything.
    prompt_length = min(prompt_length, len(ids) - 1)
    keep = set(special_ids) | ({bos_token_id} if bos_token_id is not None else set())
    lead = 0
    while lead < prompt_length and lead < max_length - 1 and ids[lead] in keep:
        lead += 1
    head = list(ids[:lead])
    prompt = ids[lead:prompt_length]
    response = ids[prompt_length:]
    overflow = len(ids) - max_length
    drop = min(overflow, len(prompt))
    prompt = prompt[drop:]
    room = max_length - len(head) - len(prompt)
    if len(response) > room:
        # keep the final token (EOS): the reward is read there
        response = response[: room - 1] + [response[-1]] if room > 1 else [response[-1]]
        if room < 1:  # only possible when the leading specials alone fill max_length
            head = head[: max_length - 1]
    return head + prompt + response


@dataclass
class LoadReport:
    """What ``load_preference_data`` did: rows read, pairs kept, pairs dropped / truncated."""

    rows: int = 0
    kept: int = 0
    dropped: int = 0
    truncated: int = 0


def _checked_record(record, columns, where: str, expected: str):
    """Check that ``record`` is an object with text in ``columns`` (and in "prompt" if present);
    returns the prompt or None."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected {expected}, got {type(record).__name__}")
    for column in columns:
        if column not in record or record[column] is None:
            raise ValueError(f"{where}: missing column '{column}'")
        _check_text(record[column], column, where)
    prompt = record.get("prompt")
    if prompt is not None:
        _check_text(prompt, "prompt", where)
    return prompt


def _pair_from_record(record, path, row, tokenizer, max_length, truncation):
    where = _where(path, row)
    prompt = _checked_record(record, ("chosen", "rejected"), where, "an object with 'chosen' and 'rejected'")
    if _is_messages(record["chosen"]) != _is_messages(record["rejected"]):
        raise ValueError(f"{where}: 'chosen' and 'rejected' must both be strings or both message lists")
    chosen = tokenize_sequence(tokenizer, prompt, record["chosen"], where)
    rejected = tokenize_sequence(tokenizer, prompt, record["rejected"], where)
    out: Dict[str, Any] = {}
    margin = record.get("margin")
    if margin is not None:
        try:
            out["margin"] = check_real("margin", margin)
        except ValueError:
            raise ValueError(f"{where}: column 'margin' must be a finite number, got {margin!r}") from None
    truncated = False
    if max_length is not None and (len(chosen) > max_length or len(rejected) > max_length):
        if truncation == "drop":
            return None, False
        shared = common_prefix_length(chosen, rejected)
        chosen = truncate_sequence(chosen, shared, max_length, special_ids=tokenizer.all_special_ids)
        rejected = truncate_sequence(rejected, shared, max_length, special_ids=tokenizer.all_special_ids)
        truncated = True
    out["chosen_ids"] = chosen
    out["rejected_ids"] = rejected
    return out, truncated


def load_preference_data(
    path: str | os.PathLike,
    tokenizer,
    max_length: Optional[int] = None,
    truncation: str = "truncate",
    return_report: bool = False,
):
    """Read and tokenise a preference file.

    Returns a list of dicts ``{"chosen_ids": list[int], "rejected_ids": list[int][, "margin": float]}``
    (TRL's tokenised column names, so TRL's RewardTrainer takes them as already processed), and
    with ``return_report=True`` also a ``LoadReport``. Raises ``ValueError`` naming file and row
    for malformed rows, and for a file with no rows.
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation: expected one of {TRUNCATION_MODES}, got {truncation!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length: expected an integer >= 2 or None, got {max_length!r}")
    report = LoadReport()
    pairs = []
    for row, record in iter_records(path):
        report.rows += 1
        pair, truncated = _pair_from_record(record, path, row, tokenizer, max_length, truncation)
        if pair is None:
            report.dropped += 1
            continue
        report.truncated += int(truncated)
        pairs.append(pair)
    if report.rows == 0:
        raise ValueError(f"{path}: no rows")
    if not pairs:
        raise ValueError(f"{path}: all {report.rows} pairs are longer than max_length={max_length} and were dropped")
    if any("margin" in p for p in pairs) and not all("margin" in p for p in pairs):
        raise ValueError(f"{path}: column 'margin' is present in some rows but not all")
    report.kept = len(pairs)
    return (pairs, report) if return_report else pairs


class PreferenceDataset(torch.utils.data.Dataset):
    """Map-style dataset over tokenised pairs (``load_preference_data``'s output); no ``datasets`` needed."""

    def __init__(self, pairs: List[Dict[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.pairs[index]


def to_hf_dataset(pairs: List[Dict[str, Any]]):
    """A ``datasets.Dataset`` with columns chosen_ids, rejected_ids (and margin) for TRL."""
    Dataset = require("datasets", "TRL's RewardTrainer", "trl").Dataset

    columns = {"chosen_ids": [p["chosen_ids"] for p in pairs], "rejected_ids": [p["rejected_ids"] for p in pairs]}
    if pairs and "margin" in pairs[0]:
        columns["margin"] = [p["margin"] for p in pairs]
    return Dataset.from_dict(columns)


# ---------------------------------------------------------------------------------------------
# collators


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int, padding_side: str = "right", length: Optional[int] = None):
    """Pad token lists to one length: returns (input_ids [N, T] long, attention_mask [N, T] long)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
    length = max(len(s) for s in sequences) if length is None else length
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            raise ValueError(f"sequences: sequence {i} is empty")
        if padding_side == "right":
            input_ids[i, :n] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[i, :n] = 1
        else:
            input_ids[i, length - n:] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[i, length - n:] = 1
    return input_ids, attention_mask


def _margins(examples):
    if "margin" not in examples[0]:
        return None
    return torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float32)


@dataclass
class PairCollator:
    """Pads chosen and rejected of a batch to one common length.

    Input: examples with ``chosen_ids`` / ``rejected_ids`` (lists of ints) and optional ``margin``.
    Output: ``chosen_input_ids``, ``chosen_attention_mask``, ``rejected_input_ids``,
    ``rejected_attention_mask`` (all [B, T] long) and ``margin`` [B] float32 when present.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: Optional[int] = None

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("examples: empty batch")
        chosen = [e["chosen_ids"] for e in examples]
        rejected = [e["rejected_ids"] for e in examples]
        length = max(len(s) for s in chosen + rejected)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        chosen_ids, chosen_mask = pad_sequences(chosen, self.pad_token_id, self.padding_side, length)
        rejected_ids, rejected_mask = pad_sequences(rejected, self.pad_token_id, self.padding_side, length)
        batch = {
            "chosen_input_ids": chosen_ids,
            "chosen_attention_mask": chosen_mask,
            "rejected_input_ids": rejected_ids,
            "rejected_attention_mask": rejected_mask,
        }
        margin = _margins(examples)
        if margin is not None:
            batch["margin"] = margin
        return batch


@dataclass
class PackedPairCollator:
    """Padding-free packing: the B chosen then the B rejected sequences of a batch in one row.

    Output: ``input_ids`` [1, T] and ``position_ids`` [1, T] (restarting at 0 per sequence),
    ``cu_seqlens`` [2B + 1] int32, ``max_seqlen`` (int), ``num_pairs`` (int, B) and ``margin`` [B]
    when present; consumed by ``model.packed_pairwise_loss``. ``pad_to_multiple_of`` rounds T up
    with one filler sequence of ``pad_token_id`` (``inform_fast.packing.pack_sequences``).
    """

    pad_to_multiple_of: Optional[int] = None
    pad_token_id: int = 0

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, Any]:
        from inform_fast.packing import pack_sequences

        if not examples:
            raise ValueError("examples: empty batch")
        sequences = [list(e["chosen_ids"]) for e in examples] + [list(e["rejected_ids"]) for e in examples]
        batch = dict(pack_sequences(sequences, pad_to_multiple_of=self.pad_to_multiple_of, pad_token_id=self.pad_token_id))
        batch["num_pairs"] = len(examples)
        margin = _margins(examples)
        if margin is not None:
            batch["margin"] = margin
        return batch


# ---------------------------------------------------------------------------------------------
# streaming for scoring


def stream_tokenized(
    path: str | os.PathLike,
    tokenizer,
    field: str = "response",
    max_length: Optional[int] = None,
) -> Iterator[Tuple[int, List[int]]]:
    """Yield ``(index, token_ids)`` for each row's ``prompt + field`` (index is 0-based row order),
    reading the file lazily: ``tokenize_example``, the tokenisation of training and of the reward
    functions, truncated by the module policy."""
    for index, (row, record) in enumerate(iter_records(path)):
        where = _where(path, row)
        prompt = _checked_record(record, (field,), where, "an object")
        yield index, tokenize_example(tokenizer, prompt, record[field], max_length, where)


def length_sorted_batches(
    items: Iterator[Tuple[int, List[int]]], batch_size: int, window: int = 64
) -> Iterator[List[Tuple[int, List[int]]]]:
    """Group ``(index, ids)`` items into batches of ``batch_size``, sorting by length inside a
    window of ``window * batch_size`` items so padding is small while memory stays bounded."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    buffer: List[Tuple[int, List[int]]] = []
    limit = batch_size * max(1, window)

    def flush():
        buffer.sort(key=lambda item: len(item[1]))
        for start in range(0, len(buffer), batch_size):
            yield buffer[start:start + batch_size]
        buffer.clear()

    for item in items:
        buffer.append(item)
        if len(buffer) >= limit:
            yield from flush()
    if buffer:
        yield from flush()
