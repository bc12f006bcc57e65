"""Padding-free packing: many sequences in one row, told apart by position ids restarting at 0.

A packed batch is ``input_ids`` [1, T] with ``position_ids`` [1, T] that count 0, 1, 2, ... within
each sequence; no attention mask. With flash-attn, Transformers turns the position ids into varlen
``cu_seqlens`` itself; for SDPA / eager attention ``block_diagonal_mask`` gives the 4-D mask that keeps
each sequence from attending to the others.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["pack_sequences", "packed_last_token_indices", "packed_sequence_ids", "block_diagonal_mask", "check_packed_position_ids"]


def pack_sequences(
    sequences: Sequence[Union[Sequence[int], torch.Tensor]],
    pad_to_multiple_of: Optional[int] = None,
    pad_token_id: int = 0,
) -> dict:
    """Concatenate token sequences into one padding-free row.

    Args:
        sequences: n >= 1 non-empty lists of token ids or 1-D integer tensors.
        pad_to_multiple_of: round T up to a multiple of this (helps kernels and compilation). The
            filler is one extra sequence of ``pad_token_id`` tokens with its own positions 0..k-1,
            so it never attends to a real sequence; the reward model returns one more reward for
            it (the last), which callers drop.
        pad_token_id: the filler token.

    Returns a dict with ``input_ids`` [1, T] int64, ``position_ids`` [1, T] int64, ``cu_seqlens``
    [n + 1] int32 (cumulative lengths of the n real sequences, the flash-attn varlen layout; with
    padding ``cu_seqlens[-1] < T``) and ``max_seqlen`` (int, longest real sequence).
    """
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise ValueError("sequences: expected a non-empty list of token sequences")
    pieces = []
    for index, seq in enumerate(sequences):
        tensor = seq if isinstance(seq, torch.Tensor) else torch.as_tensor(list(seq), dtype=torch.long)
        if tensor.dim() != 1:
            raise ValueError(f"sequences[{index}]: expected a 1-D sequence, got shape {tuple(tensor.shape)}")
        if tensor.numel() == 0:
            raise ValueError(f"sequences[{index}]: empty sequence")
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"sequences[{index}]: expected integer token ids, got {tensor.dtype}")
        pieces.append(tensor.to(torch.long))
    lengths = torch.tensor([p.numel() for p in pieces], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(pieces) + 1, dtype=torch.int32)
    cu_seqlens[1:] = lengths.cumsum(0)
    device = pieces[0].device
    input_ids = torch.cat([p.to(device) for p in pieces])
    position_ids = torch.cat([torch.arange(p.numel(), device=device) for p in pieces])
    if pad_to_multiple_of is not None:
        if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of: expected an integer >= 1, got {pad_to_multiple_of!r}")
        extra = (-input_ids.numel()) % pad_to_multiple_of
        if extra:
            input_ids = torch.cat([input_ids, torch.full((extra,), pad_token_id, dtype=torch.long, device=device)])
            position_ids = torch.cat([position_ids, torch.arange(extra, device=device)])
    return {
        "input_ids": input_ids.unsqueeze(0),
        "position_ids": position_ids.unsqueeze(0),
        "cu_seqlens": cu_seqlens.to(device),
        "max_seqlen": int(lengths.max()),
    }


def check_packed_position_ids(position_ids: torch.Tensor, name: str = "position_ids") -> torch.Tensor:
    """Validate packed position ids ([1, T] or [T]; start at 0, step +1 or restart at 0); return [T]."""
    if not isinstance(position_ids, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(position_ids).__name__}")
    if position_ids.dim() == 2:
        if position_ids.shape[0] != 1:
            raise ValueError(f"{name}: a packed batch has one row, got shape {tuple(position_ids.shape)}")
        position_ids = position_ids[0]
    if position_ids.dim() != 1 or position_ids.numel() == 0:
        raise ValueError(f"{name}: expected shape [1, T] with T >= 1, got {tuple(position_ids.shape)}")
    if position_ids.is_floating_point():
        raise ValueError(f"{name}: expected integer position ids, got {position_ids.dtype}")
    if int(position_ids[0]) != 0:
        raise ValueError(f"{name}: a packed row must start at position 0, got {int(position_ids[0])}")
    step = position_ids[1:] - position_ids[:-1]
    bad = (step != 1) & (position_ids[1:] != 0)
    if bool(bad.any()):
        where = int(torch.nonzero(bad)[0]) + 1
        raise ValueError(
            f"{name}: packed position ids must count up by 1 and restart at 0 for each sequence; "
            f"token {where} has position {int(position_ids[where])} after {int(position_ids[where - 1])}"
        )
    return position_ids


def packed_sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Sequence index of every packed token: [1, T] or [T] -> [T] int64 (0 for the first sequence)."""
    flat = check_packed_position_ids(position_ids)
    return (flat == 0).to(torch.long).cumsum(0) - 1


def packed_last_token_indices(position_ids: torch.Tensor) -> torch.Tensor:
    """Index of each packed sequence's last token: [1, T] -> [n] int64.

    A token ends a sequence when the next token's position id is 0, or when it is the last token.
    """
    flat = check_packed_position_ids(position_ids)
    is_last = torch.ones_like(flat, dtype=torch.bool)
    is_last[:-1] = flat[1:] == 0
    return torch.nonzero(is_last).flatten()


def block_diagonal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32, causal: bool = True) -> torch.Tensor:
    """Additive 4-D attention mask [1, 1, T, T] for a packed row: 0 where token i may attend to token j
    (same sequence, and j <= i when ``causal``), the dtype's most negative value elsewhere.

    Transformers passes a ready 4-D mask through to SDPA and eager attention unchanged. It costs
    T^2 elements; for long packed rows use flash-attn (varlen, no mask).
    """
    seq = packed_sequence_ids(position_ids)
    allowed = seq[:, None] == seq[None, :]  # [T, T]
    if causal:
        allowed = allowed & torch.ones_like(allowed).tril()
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seq.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
