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

Everything is written under temporary names in the output's folder and renamed at the end; a bad
row stops the command with its file and row number and leaves no output.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

HELP = "score responses: rewards and latents (mu) to .safetensors/.npy"


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


class _SafetensorsWriter:
    """A safetensors file with ``rewards`` [N] and ``mu`` [N, L] float32 whose data region is a
    memory map filled in place (header first, so no second pass and no full copy in memory)."""

    def __init__(self, path: Path, rows: int, latent_dim: int):
        reward_bytes = 4 * rows
        mu_bytes = 4 * rows * latent_dim
        header = {
            "rewards": {"dtype": "F32", "shape": [rows], "data_offsets": [0, reward_bytes]},
            "mu": {"dtype": "F32", "shape": [rows, latent_dim], "data_offsets": [reward_bytes, reward_bytes + mu_bytes]},
            "__metadata__": {"format": "pt", "producer": "inform-fast score"},
        }
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * ((-len(blob)) % 8)  # keep the data region 8-byte aligned
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(blob)))
            handle.write(blob)
            handle.truncate(8 + len(blob) + reward_bytes + mu_bytes)
        start = 8 + len(blob)
        self.rewards = np.memmap(path, dtype="<f4", mode="r+", offset=start, shape=(rows,)) if rows else np.zeros(0, "<f4")
        self.mu = np.memmap(path, dtype="<f4", mode="r+", offset=start + reward_bytes, shape=(rows, latent_dim))

    def flush(self):
        for array in (self.rewards, self.mu):
            if isinstance(array, np.memmap):
                array.flush()


def score_file(model, tokenizer, data_path, output, field: str = "response", batch_size: int = 32,
               max_length: Optional[int] = 1024, window: int = 64, progress: bool = True) -> int:
    """Score every row of ``data_path`` and write ``output`` (see the module docstring). Returns N."""
    import torch
    from tqdm.auto import tqdm

    from inform_fast import data

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".safetensors", ".npy"):
        raise ValueError(f"--output: must end with .safetensors or .npy, got {output.name}")
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
    output.parent.mkdir(parents=True, exist_ok=True)

    temps = []

    def temp_path(final: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=final.suffix, dir=final.parent)
        os.close(fd)
        temps.append((Path(name), final))
        return Path(name)

    try:
        if suffix == ".safetensors":
            writer = _SafetensorsWriter(temp_path(output), rows, latent_dim)
            rewards_out, mu_out = writer.rewards, writer.mu
        else:
            from numpy.lib.format import open_memmap

            mu_out = open_memmap(temp_path(output), mode="w+", dtype=np.float32, shape=(rows, latent_dim))
            rewards_out = open_memmap(temp_path(_npy_rewards_path(output)), mode="w+", dtype=np.float32, shape=(rows,))
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
        for array in (rewards_out, mu_out):
            if isinstance(array, np.memmap):
                array.flush()
        del rewards_out, mu_out
        from inform_fast._io import process_umask

        umask = process_umask()
        for temp, final in temps:
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(temp, final)
        temps.clear()
    finally:
        for temp, _ in temps:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
    return rows


def run(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from inform_fast.modeling import InfoRMForRewardModel

    if not Path(args.model).is_dir():
        raise ValueError(f"--model: {args.model} is not a checkpoint directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = InfoRMForRewardModel.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else None)
    except OSError as error:
        raise ValueError(f"--model: cannot load an InfoRM checkpoint from {args.model} ({error})") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    rows = score_file(model, tokenizer, args.data, args.output, field=args.field, batch_size=args.batch_size,
                      max_length=args.max_length, window=args.window)
    extra = f" (rewards in {_npy_rewards_path(Path(args.output))})" if args.output.lower().endswith(".npy") else ""
    print(f"inform-fast score: {rows} responses -> {args.output}{extra}")
    return 0
