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
  queries, the exact direct-difference search of ``inform_fast._C``; above that the same float32
  GEMM tiles with the C++ epilogue ``nearest_tile_update`` (a vectorized row minimum; the
  argmin is searched only in rows whose minimum improved), in place of PyTorch's
  ``min(dim=1)``, which costs 5x a plain ``amin``.

Measured on the 2-core development CPU (AMD EPYC, AVX-512; 2026-11-25), 50,000 x 128 float32
references, ``pytest benchmarks/bench_detection.py -k nearest --benchmark-only`` (min of 5):

* 1000 queries: 74 ms (before these tiles: 110-150 ms), faiss-cpu ``IndexFlatL2`` 60 ms,
  chunked NumPy 85-94 ms. Of the 74 ms, 6 were the finite check of the inputs (since made
  cheaper: the same benchmark in ``benchmarks/results/cpu-2026-11-25.json`` gives medians of
  65.1 ms, faiss 58.9 ms, NumPy 81.5 ms) and 59 the GEMMs (PyTorch's MKL runs them at
  ~220 GFLOP/s here; NumPy's OpenBLAS, which faiss uses, in 51 ms, but
  mixing its thread pool with PyTorch's between tiles made the whole search 8x slower). The
  ``reference`` backend's PyTorch tiles find the indices in 86 ms.
* ``CPP_MAX_QUERIES``: the exact search (AVX-512/AVX2 clones picked at run time, four queries
  per pass over a reference: 4x faster than the plain loop) against the tiles, 16 / 32 / 48 /
  64 queries: 2.3 / 4.6 / 7.1 / 9.4 ms against 4.8 / 5.8 / 6.9 / 8.1 ms (2*10^5 references:
  32 queries 19 against 24 ms, 64 queries 38 against 32 ms).
* ``CPU_BLOCK_REFS``, the index search alone: [1024, 1024] tiles 69 ms, [1024, 2048] 77 ms,
  [1024, 8192] 87 ms (the PyTorch tiles: 86 / 86 / 98 ms).
* 6 queries: 7.4 ms against faiss 2.8-3.1 ms, of which the exact search was 1.1 ms and the
  finite check of the 50,000 references 6 ms; with the cheaper check, 1.46 ms against faiss
  2.82 ms (medians, ``cpu-2026-11-25.json``).
"""
from __future__ import annotations

from typing import Optional

import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_positive_int

# backends: inform_fast.dispatch.BACKENDS

# Measured on the development CPU (see the module docstring): the query count up to which the
# exact C++ search beats the GEMM tiles, and the reference-tile cap on the CPU (a [1024, 1024]
# float32 tile stays in cache).
CPP_MAX_QUERIES = 48
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


@torch.no_grad()  # NumPy views and out= need tensors outside autograd
def _nearest_index_tiles_cpp(queries: torch.Tensor, references: torch.Tensor, block_queries: int, block_refs: int, native) -> torch.Tensor:
    """Index [q] int64, float32 GEMM tiles with the C++ epilogue: the same tiles and tie rule as
    ``_nearest_index_reference``, but each tile is a plain ``mm`` into one reused buffer (the
    reference tile is pre-scaled by -2, which is exact) and ``native.nearest_tile_update`` adds
    ||r||^2 and merges the row minima in one vectorized pass."""
    shift = reference_shift(references, torch.float32)
    q = queries.to(torch.float32) - shift  # [q, L], shifted once
    n_q, n_r = q.shape[0], references.shape[0]
    best = torch.full((n_q,), float("inf")).numpy()
    best_index = torch.zeros(n_q, dtype=torch.int64)
    index_view = best_index.numpy()
    buffer = torch.empty(min(block_queries, n_q) * min(block_refs, n_r))
    for r0 in range(0, n_r, block_refs):
        r = references[r0 : r0 + block_refs].to(torch.float32) - shift  # [br, L]
        norm = (r * r).sum(1).numpy()
        r.mul_(-2.0)
        for q0 in range(0, n_q, block_queries):
            q1 = min(n_q, q0 + block_queries)
            tile = buffer[: (q1 - q0) * r.shape[0]].view(q1 - q0, r.shape[0])
            torch.mm(q[q0:q1], r.T, out=tile)  # -2 q.r
            native.nearest_tile_update(tile.numpy(), norm, r0, best[q0:q1], index_view[q0:q1])
    return best_index


def _nearest_index_cpp(queries: torch.Tensor, references: torch.Tensor, block_queries: int, block_refs: int) -> torch.Tensor:
    """Index [q] int64: exact C++ search for few queries, GEMM tiles with the C++ epilogue for
    many (float64 input stays on the PyTorch tiles, which keep float64)."""
    from inform_fast import _native

    if _work_dtype(queries, references) == torch.float64:
        return _nearest_index_reference(queries, references, block_queries, block_refs)
    if queries.shape[0] > CPP_MAX_QUERIES:
        return _nearest_index_tiles_cpp(queries, references, block_queries, block_refs, _native.module())
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


def _knn_index_reference(queries: torch.Tensor, references: torch.Tensor, k: int, block_queries: int, block_refs: int) -> torch.Tensor:
    """Indices [q, k] int64 of the k nearest references of each query (any order), PyTorch tiles
    with the same shift as ``_nearest_index_reference``."""
    dtype = _work_dtype(queries, references)
    shift = reference_shift(references, dtype)
    q = queries.to(dtype) - shift
    best = torch.empty((q.shape[0], 0), dtype=dtype, device=q.device)
    best_index = torch.empty((q.shape[0], 0), dtype=torch.int64, device=q.device)
    for r0 in range(0, references.shape[0], block_refs):
        r = references[r0 : r0 + block_refs].to(dtype) - shift
        norm = (r * r).sum(1)[None, :]
        tile_best, tile_index = [], []
        for q0 in range(0, q.shape[0], block_queries):
            rows = slice(q0, q0 + block_queries)
            partial = torch.addmm(norm, q[rows], r.T, alpha=-2.0)  # ||r||^2 - 2 q.r
            values = torch.cat([best[rows], partial], dim=1)
            where = torch.cat([best_index[rows], torch.arange(r0, r0 + r.shape[0], device=q.device).expand(partial.shape[0], -1)], dim=1)
            top = torch.topk(values, min(k, values.shape[1]), dim=1, largest=False, sorted=False)
            tile_best.append(top.values)
            tile_index.append(where.gather(1, top.indices))
        best, best_index = torch.cat(tile_best), torch.cat(tile_index)
    return best_index


def knn_distance(
    queries,
    references,
    k: int,
    block_queries: int = 1024,
    block_refs: int = 8192,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances from each query to its ``k`` nearest references, ascending.

    Args:
        queries: [q, L] float tensor or array; references: [m, L] (m >= k), same L and device.
        k: number of neighbours (>= 1).
        block_queries, block_refs: tile sizes (memory O(block_queries * (block_refs + k))).
        backend: None/"auto" or a forced backend (see ``inform_fast.dispatch``).

    Returns:
        (distances [q, k], indices [q, k]): distances float32 (float64 for float64 input),
        recomputed exactly as ||q - r|| in float64 for the chosen references and sorted ascending;
        indices int64 into ``references``. ``distances[:, -1]`` is the k-th nearest distance.
    """
    q = as_latents("queries", queries)
    r = as_latents("references", references, dim=q.shape[1])
    check_positive_int("k", k)
    if k > r.shape[0]:
        raise ValueError(f"k: {k} neighbours requested but references has only {r.shape[0]} rows")
    check_positive_int("block_queries", block_queries)
    check_positive_int("block_refs", block_refs)
    if q.device != r.device:
        raise ValueError(f"references: on {r.device}, but queries are on {q.device}")
    return knn_distance_checked(q, r, k, block_queries, block_refs, backend)


def knn_distance_checked(
    q: torch.Tensor, r: torch.Tensor, k: int, block_queries: int = 1024, block_refs: int = 8192, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_distance`` on arguments already validated by the caller."""
    _, impl = dispatch.resolve("knn_distance", q.device, backend)
    if q.device.type == "cpu":
        block_refs = min(block_refs, CPU_BLOCK_REFS)
    index = impl(q, r, k, block_queries, block_refs)
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    diff = q.to(torch.float64)[:, None, :] - r[index].to(torch.float64)  # [q, k, L]
    distance = diff.norm(dim=2)
    distance, order = torch.sort(distance, dim=1)
    return distance.to(out_dtype), index.gather(1, order)
