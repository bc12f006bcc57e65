"""``inform-fast score``: rewards and latents (mu) for every response of a file.

The file is streamed (JSONL line by line, Parquet by record batches), tokenised, sorted by length
inside a window of ``--window`` batches (less padding, bounded memory), scored in batches on the
model's device, and written straight into a preallocated memory-mapped output, so millions of
responses never sit in memory at once. Row order is kept.

Outputs (float32, row i = data row i):

* ``FILE.safetensors``: tensors ``rewards`` [N] and ``mu`` [N, L] (the data region is
  memory-mapped and filled in place);
* ``FILE.npy``: ``mu`` [N, L] in ``FILE.npy`` and ``rewards`` [N] in ``FILE.rewards.npy``
  (both ``numpy.lib.format.open_memmap`` files, loadable with ``np.load(..., mmap_mode="r")``).

Everything is written under temporary names in the output's folder (``inform_fast._io``) and
renamed at the end, both .npy files together; a bad row, a full disk (the space is reserved before
scoring starts), Ctrl-C or SIGTERM stop the command with one line and leave no output and any
previous output unchanged. The headers are written last: a temporary file left by SIGKILL is not
a loadable .npy / .safetensors file.
"""
from __future__ import annotations

import errno
import io
import json
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="an InfoRM checkpoint directory (model + tokenizer)")
    parser.add_argument("--data", required=True, help=".jsonl, .json, .parquet or a datasets folder; rows hold --field (and optionally prompt)")
    parser.add_argument("--output", required=True, help="FILE.safetensors (rewards, mu) or FILE.npy (mu; rewards in FILE.rewards.npy)")
    parser.add_argument("--field", default="response", help="column with the response text or messages (default: response; e.g. chosen)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=1024, help="max tokens (prompt end kept, response cut from the right keeping EOS)")
    parser.add_argument("--window", type=int, default=64, help="length-sort window, in batches (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16")


def _npy_rewards_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + ".rewards.npy")


def output_paths(output) -> list:
    """The files ``--output`` stands for: [FILE.safetensors] or [FILE.npy, FILE.rewards.npy]."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".safetensors", ".npy"):
        raise ValueError(f"--output: must end with .safetensors or .npy, got {output.name}")
    return [output] if suffix == ".safetensors" else [output, _npy_rewards_path(output)]


def _reserve(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of real disk space now: a full disk fails here with ENOSPC,
    instead of killing the process with SIGBUS when the memory map first touches a page the disk
    has no room for (what a sparse file does)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)  # no fallocate here: a sparse file (a full disk may still end in SIGBUS)


class _ArrayFile:
    """A file of float32 arrays filled in place: disk space reserved up front, the arrays written
    through memory maps, and the header (``header`` bytes at offset 0) written last, so that a file
    cut short by SIGKILL is not a valid .npy / .safetensors file."""

    def __init__(self, path: str, header: bytes, shapes: list):
        self.path, self.header = path, header
        sizes = [4 * int(np.prod(shape)) for shape in shapes]
        fd = os.open(path, os.O_RDWR)
        try:
            _reserve(fd, len(header) + sum(sizes))
        finally:
            os.close(fd)
        offset = len(header)
        self.arrays = []
        for shape, size in zip(shapes, sizes):
            self.arrays.append(np.memmap(path, dtype="<f4", mode="r+", offset=offset, shape=tuple(shape)))
            offset += size

    def finish(self) -> None:
        for array in self.arrays:
            array.flush()
        self.arrays = []
        with open(self.path, "r+b") as handle:
            handle.write(self.header)


def _npy_header(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _safetensors_header(rows: int, latent_dim: int) -> bytes:
    reward_bytes = 4 * rows
    header = {
        "rewards": {"dtype": "F32", "shape": [rows], "data_offsets": [0, reward_bytes]},
        "mu": {"dtype": "F32", "shape": [rows, latent_dim], "data_offsets": [reward_bytes, reward_bytes + 4 * rows * latent_dim]},
        "__metadata__": {"format": "pt", "producer": "inform-fast score"},
    }
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)  # keep the data region 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob


def open_outputs(temps: list, rows: int, latent_dim: int):
    """(files, rewards [rows], mu [rows, latent_dim]) writing into the temporary paths of
    ``output_paths``: one .safetensors file, or the .npy pair."""
    if len(temps) == 1:
        file = _ArrayFile(temps[0], _safetensors_header(rows, latent_dim), [(rows,), (rows, latent_dim)])
        return [file], file.arrays[0], file.arrays[1]
    mu_file = _ArrayFile(temps[0], _npy_header((rows, latent_dim)), [(rows, latent_dim)])
    rewards_file = _ArrayFile(temps[1], _npy_header((rows,)), [(rows,)])
    return [mu_file, rewards_file], rewards_file.arrays[0], mu_file.arrays[0]


def score_file(model, tokenizer, data_path, output, field: str = "response", batch_size: int = 32,
               max_length: Optional[int] = 1024, window: int = 64, progress: bool = True) -> int:
    """Score every row of ``data_path`` and write ``output`` (see the module docstring). Returns N."""
    import torch
    from tqdm.auto import tqdm

    from inform_fast import data
    from inform_fast._io import atomic_paths, new_folders

    targets = output_paths(output)
    if batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {batch_size}")
    if window < 1:
        raise ValueError(f"--window: must be >= 1, got {window}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"--max-length: must be >= 2, got {max_length}")
    rows = data.count_records(data_path)
    if rows == 0:
        raise ValueError(f"{data_path}: no rows")
    latent_dim = model.config.latent_dim
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device

    with new_folders(targets[0].parent, "--output"), atomic_paths(targets, "--output") as temps:
        files, rewards_out, mu_out = open_outputs(temps, rows, latent_dim)
        seen = 0
        model.eval()
        items = data.stream_tokenized(data_path, tokenizer, field=field, max_length=max_length)
        with tqdm(total=rows, desc="scoring", unit="resp", disable=not progress) as bar, torch.inference_mode():
            for batch in data.length_sorted_batches(items, batch_size, window):
                indices = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
                if indices.max() >= rows:
                    raise ValueError(f"{data_path}: more rows than counted ({rows}); was the file changed while scoring?")
                input_ids, attention_mask = data.pad_sequences([ids for _, ids in batch], pad_id, "right")
                rewards, mu = model.score(input_ids.to(device), attention_mask.to(device))
                rewards_out[indices] = rewards.float().cpu().numpy()
                mu_out[indices] = mu.float().cpu().numpy()
                seen += len(batch)
                bar.update(len(batch))
        if seen != rows:
            raise ValueError(f"{data_path}: read {seen} rows but counted {rows}; was the file changed while scoring?")
        del rewards_out, mu_out
        for file in files:
            file.finish()
    return rows


def run(args) -> int:
    import torch

    from inform_fast._io import check_output_path
    from inform_fast.loading import load_inform_model, resolve_model

    for target in output_paths(args.output):  # before the model is loaded
        check_output_path(target, "--output", create_folders=True)
    folder = resolve_model(args.model, local_only=True)
    model, tokenizer = load_inform_model(folder, dtype=torch.bfloat16 if args.bf16 else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    rows = score_file(model, tokenizer, args.data, args.output, field=args.field, batch_size=args.batch_size,
                      max_length=args.max_length, window=args.window)
    extra = f" (rewards in {_npy_rewards_path(Path(args.output))})" if args.output.lower().endswith(".npy") else ""
    print(f"inform-fast score: {rows} responses -> {args.output}{extra}")
    return 0
