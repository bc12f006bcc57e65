"""Nearest-reference distance, tiled: never holds the full [q, m] distance matrix.

For each query the nearest reference is picked from ``||r||^2 - 2 q.r`` (the ``||q||^2`` term
is the same along a row), computed one [block_queries, block_refs] tile at a time with a GEMM and
min-reduced per tile. The winner's distance is then recomputed exactly as ``||q - r||`` in
float64, so the returned distance carries no GEMM cancellation error (which is large when
``||q||`` is big compared to the distance).

Backends (``inform_fast.dispatch``, op ``"nearest_distance"``):

* ``reference``: PyTorch tiles (any device; the CPU default).
* ``triton``: ``inform_fast.kernels.min_distance`` (CUDA; the min is reduced in the kernel's
  epilogue and the reference axis is split across programs).
* ``cpp`` (the CPU default when the extension is built): for at most ``CPP_MAX_QUERIES``
  queries, the exact direct-difference search of ``inform_fast._C`` (measured on the 2-core
  development CPU, 6 centroids x 2*10^5 x 128: 0.08 s against 0.9 s for the GEMM tiles, whose
  skinny GEMMs run badly); above that the GEMM tiles win (1000 queries: 0.5 s against 4.1 s), so
  it hands over to them.
"""
from __future__ import annotations

from typing import Optional

import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_positive_int

dispatch.register("nearest_distance", "reference", "inform_fast.detect.neighbors:_nearest_index_reference")
dispatch.register("nearest_distance", "triton", "inform_fast.kernels.min_distance:nearest_index")
dispatch.register("nearest_distance", "cpp", "inform_fast.detect.neighbors:_nearest_index_cpp")

# Crossover measured on the development CPU (see the module docstring).
CPP_MAX_QUERIES = 32


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def reference_shift(references: torch.Tensor, dtype: torch.dtype, rows: int = 65536) -> torch.Tensor:
    """[L] mean of the references (float64 accumulation), subtracted from both sets before the
    GEMM: distances are unchanged, but ||q||^2 and ||r||^2 shrink, and with them the float32
    cancellation that would otherwise pick wrong winners for latents far from the origin."""
    total = torch.zeros(references.shape[1], dtype=torch.float64, device=references.device)
    for r0 in range(0, references.shape[0], rows):
        total += references[r0 : r0 + rows].to(torch.float64).sum(0)
    return (total / references.shape[0]).to(dtype)


def _nearest_index_reference(queries: torch.Tensor, references: torch.Tensor, block_queries: int, block_refs: int) -> torch.Tensor:
    """Index [q] int64 of the nearest reference, PyTorch tiles (float32, or float64 for float64 input)."""
    dtype = _work_dtype(queries, references)
    n_q, n_r = queries.shape[0], references.shape[0]
    shift = reference_shift(references, dtype)
    best_index = torch.empty(n_q, dtype=torch.int64, device=queries.device)
    for q0 in range(0, n_q, block_queries):
        q = queries[q0 : q0 + block_queries].to(dtype) - shift  # [bq, L]
        best = torch.full((q.shape[0],), float("inf"), dtype=dtype, device=q.device)
        arg = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
        for r0 in range(0, n_r, block_refs):
            r = references[r0 : r0 + block_refs].to(dtype) - shift  # [br, L]
            partial = torch.addmm((r * r).sum(1)[None, :], q, r.T, alpha=-2.0)  # [bq, br] = ||r||^2 - 2 q.r
            value, where = partial.min(dim=1)
            better = value < best  # strict: ties keep the earlier (smaller) index
            best = torch.where(better, value, best)
            arg = torch.where(better, where + r0, arg)
        best_index[q0 : q0 + q.shape[0]] = arg
    return best_index


def _nearest_index_cpp(queries: torch.Tensor, references: torch.Tensor, block_queries: int, block_refs: int) -> torch.Tensor:
    """Index [q] int64: exact C++ search for few queries, the GEMM tiles for many (float64 input
    also stays on the tiles, which keep float64)."""
    from inform_fast import _native

    if queries.shape[0] > CPP_MAX_QUERIES or _work_dtype(queries, references) == torch.float64:
        return _nearest_index_reference(queries, references, block_queries, block_refs)

    q = queries.detach().to(torch.float32).contiguous().numpy()
    r = references.detach().to(torch.float32).contiguous().numpy()
    _, index = _native.module().nearest_reference(q, r)
    return torch.from_numpy(index)


def nearest_distance(
    queries,
    references,
    block_queries: int = 1024,
    block_refs: int = 8192,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query to its nearest reference.

    Args:
        queries: [q, L] float tensor or array (float16/bfloat16/float32/float64).
        references: [m, L], same L, same device as ``queries``.
        block_queries, block_refs: tile sizes (memory is O(block_queries * block_refs)).
        backend: None/"auto", "reference", "triton" or "cpp" (see the module docstring).

    Returns:
        (distances [q], indices [q]): distances float32 (float64 for float64 input), computed
        exactly as ||q - r|| in float64 for the chosen reference; indices int64 into references
        (the smallest index among exact ties in a tile).
    """
    q = as_latents("queries", queries)
    r = as_latents("references", references, dim=q.shape[1])
    check_positive_int("block_queries", block_queries)
    check_positive_int("block_refs", block_refs)
    if q.device != r.device:
        raise ValueError(f"references: on {r.device}, but queries are on {q.device}")
    return nearest_distance_checked(q, r, block_queries, block_refs, backend)


def nearest_distance_checked(
    q: torch.Tensor, r: torch.Tensor, block_queries: int = 1024, block_refs: int = 8192, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nearest_distance`` on arguments already validated by the caller (no second pass)."""
    _, impl = dispatch.resolve("nearest_distance", q.device, backend)
    index = impl(q, r, block_queries, block_refs)
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    diff = q.to(torch.float64) - r.index_select(0, index).to(torch.float64)
    return diff.norm(dim=1).to(out_dtype), index
