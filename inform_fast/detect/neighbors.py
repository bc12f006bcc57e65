"""Nearest-reference distance, tiled: never holds the full [q, m] distance matrix.

For each query the nearest reference is picked from ``||r||^2 - 2 q.r`` (the ``||q||^2`` term
is the same along a row), computed one [block_queries, block_refs] tile at a time with a GEMM and
min-reduced per tile. The references' mean is subtracted from both sets first (it limits the
float32 cancellation), and the winner's distance is then recomputed exactly as ``||q - r||`` in
float64, so the returned distance carries no GEMM cancellation error (which is large when
``||q||`` is big compared to the distance). The reference tiles are the outer loop: each is
shifted and normed once, and the strict ``<`` across tiles keeps the smallest index on ties.

Backends (``inform_fast.dispatch``, op ``"nearest_distance"``):

* ``reference``: PyTorch tiles (any device; the CPU default without the extension).
* ``triton``: ``inform_fast.kernels.min_distance`` (CUDA; the min is reduced in the kernel's
  epilogue and the reference axis is split across programs).
* ``cpp`` (the CPU default when the extension is built): for at most ``CPP_MAX_QUERIES``
  queries, the exact direct-difference search of ``inform_fast._C`` (measured on the 2-core
  development CPU, 6 centroids x 2*10^5 x 128: 0.08 s against 0.9 s for the GEMM tiles, whose
  skinny GEMMs run badly); above that the GEMM tiles win, so it hands over to them.

Measured on the 2-core development CPU, 1000 queries x 50,000 x 128 float32 references: the
PyTorch tiles find the indices in 86 ms (before the reference tiles were the outer loop:
110-150 ms; chunked NumPy 85-94 ms); [1024, 1024] tiles 86 ms, [1024, 8192] 98 ms, hence
``CPU_BLOCK_REFS``.
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

# Measured on the development CPU (see the module docstring): the query count up to which the
# exact C++ search beats the GEMM tiles, and the reference-tile cap on the CPU (a [1024, 1024]
# float32 tile stays in cache).
CPP_MAX_QUERIES = 32
CPU_BLOCK_REFS = 1024


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def reference_shift(references: torch.Tensor, dtype: torch.dtype, rows: int = 65536) -> torch.Tensor:
    """[L] mean of the references, subtracted from both sets before the GEMM: distances are
    unchanged, but ||q||^2 and ||r||^2 shrink, and with them the float32 cancellation that would
    otherwise pick wrong winners for latents far from the origin.

    Chunks of ``rows`` are summed in float32 (float64 for float64 input; PyTorch's reductions
    sum in cascade, so the error is a few float32 ulps), and the chunk sums in float64: any shift
    close to the mean serves, and converting every element to float64 first cost 10x more."""
    acc = torch.float64 if references.dtype == torch.float64 else torch.float32
    total = torch.zeros(references.shape[1], dtype=torch.float64, device=references.device)
    for r0 in range(0, references.shape[0], rows):
        total += references[r0 : r0 + rows].sum(0, dtype=acc)
    return (total / references.shape[0]).to(dtype)


def _nearest_index_reference(queries: torch.Tensor, references: torch.Tensor, block_queries: int, block_refs: int) -> torch.Tensor:
    """Index [q] int64 of the nearest reference, PyTorch tiles (float32, or float64 for float64 input)."""
    dtype = _work_dtype(queries, references)
    shift = reference_shift(references, dtype)
    q = queries.to(dtype) - shift  # [q, L], shifted once
    best = torch.full((q.shape[0],), float("inf"), dtype=dtype, device=q.device)
    best_index = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    # references outer: each reference tile is shifted and normed once, not once per query block
    for r0 in range(0, references.shape[0], block_refs):
        r = references[r0 : r0 + block_refs].to(dtype) - shift  # [br, L]
        norm = (r * r).sum(1)[None, :]
        for q0 in range(0, q.shape[0], block_queries):
            rows = slice(q0, q0 + block_queries)
            value, where = torch.addmm(norm, q[rows], r.T, alpha=-2.0).min(dim=1)  # ||r||^2 - 2 q.r
            better = value < best[rows]  # strict: ties keep the earlier (smaller) index
            best[rows] = torch.where(better, value, best[rows])
            best_index[rows] = torch.where(better, where + r0, best_index[rows])
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
        block_queries, block_refs: tile sizes (memory is O(block_queries * block_refs)); on the
            CPU the reference tile is at most ``CPU_BLOCK_REFS`` rows.
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
    if q.device.type == "cpu":
        block_refs = min(block_refs, CPU_BLOCK_REFS)
    index = impl(q, r, block_queries, block_refs)
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    diff = q.to(torch.float64) - r.index_select(0, index).to(torch.float64)
    return diff.norm(dim=1).to(out_dtype), index
