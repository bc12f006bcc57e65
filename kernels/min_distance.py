"""Triton tiled nearest-reference search: per query, argmin_r ||r||^2 - 2 q.r, min reduced in
the epilogue of each [BLOCK_Q, BLOCK_R] tile, never storing the [q, m] matrix.

The reference axis is split across programs (grid = query blocks x reference splits) so that a
few queries against millions of references still fill the GPU; the splits are reduced with one
small torch.min. ``inform_fast.detect.neighbors.nearest_distance`` recomputes the winner's
distance exactly afterwards.

The references are read once per call: their squared norms are accumulated in the kernel from
the tile it loads anyway, and the conditioning shift (subtracted from both sets so that float32
``||r||^2 - 2 q.r`` does not cancel badly far from the origin; distances do not depend on it) is
the mean of an evenly strided sample, not of every row. For 10^7 x 128 references (5 GB) an
extra full pass for each would triple the memory traffic of a memory-bound search.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


# 8 warps: with 4, ptxas spills the 64 x 64 fp32 tile and its operands on sm_90 (174 local stores
# with tf32, 161 with exact products; none with 8 for tf32 at any query block) - ``resource_report``
_NUM_WARPS = 8


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps) as ``nearest_index`` launches it on CUDA at
    dim = 128: 64 and 16 queries a block, tf32 and exact products."""
    return [(_nearest_kernel, {"index_ptr": "*i64"}, dict(BLOCK_Q=block_q, BLOCK_R=64, BLOCK_D=64, PRECISION=precision), _NUM_WARPS)
            for block_q, precision in ((64, "tf32"), (16, "tf32"), (64, "ieee"))]



@triton.jit
def _nearest_kernel(
    q_ptr,  # [n_q, dim] queries
    r_ptr,  # [n_r, dim] references
    shift_ptr,  # [dim] float32, subtracted from both sets (near the reference mean: less cancellation)
    best_ptr,  # [n_split, n_q] float32 out: min over the split of ||r||^2 - 2 q.r
    index_ptr,  # [n_split, n_q] int64 out: its reference index
    n_q,
    n_r,
    dim,
    stride_q,
    stride_r,
    refs_per_split,  # multiple of BLOCK_R
    BLOCK_Q: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" (exact fp32 products) or "tf32"
):
    pid_q = tl.program_id(0)
    split = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < n_q
    best = tl.full((BLOCK_Q,), float("inf"), tl.float32)
    best_index = tl.zeros((BLOCK_Q,), tl.int64)
    start = split * refs_per_split
    stop = tl.minimum(start + refs_per_split, n_r)
    for r0 in range(start, stop, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < stop
        acc = tl.zeros((BLOCK_Q, BLOCK_R), tl.float32)
        rn = tl.zeros((BLOCK_R,), tl.float32)  # ||r - shift||^2, from the tile already loaded
        for d0 in range(0, dim, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < dim
            shift = tl.load(shift_ptr + offs_d, mask=mask_d, other=0.0)
            q = tl.load(q_ptr + offs_q.to(tl.int64)[:, None] * stride_q + offs_d[None, :], mask=mask_q[:, None] & mask_d[None, :], other=0.0)
            # 64-bit row offsets: n_r * dim can pass 2^31
            r = tl.load(r_ptr + offs_r.to(tl.int64)[:, None] * stride_r + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :], other=0.0)
            q = tl.where(mask_q[:, None] & mask_d[None, :], q.to(tl.float32) - shift[None, :], 0.0)
            r = tl.where(mask_r[:, None] & mask_d[None, :], r.to(tl.float32) - shift[None, :], 0.0)
            rn += tl.sum(r * r, axis=1)
            acc += tl.dot(q, tl.trans(r), input_precision=PRECISION)
        partial = rn[None, :] - 2.0 * acc  # [BLOCK_Q, BLOCK_R]
        partial = tl.where(mask_r[None, :], partial, float("inf"))
        # epilogue: reduce the tile to one candidate per query
        tile_min = tl.min(partial, axis=1)
        is_min = partial == tile_min[:, None]
        tile_arg = tl.min(tl.where(is_min, offs_r[None, :], n_r), axis=1).to(tl.int64)  # smallest index among ties
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_index = tl.where(better, tile_arg, best_index)
    out = split * n_q + offs_q
    tl.store(best_ptr + out, best, mask=mask_q)
    tl.store(index_ptr + out, best_index, mask=mask_q)


def sampled_centre(references: torch.Tensor, rows: int = 65536) -> torch.Tensor:
    """[L] float32: the float64 mean of at most ``rows`` evenly strided references."""
    step = max(1, references.shape[0] // rows)
    return references[::step][:rows].to(torch.float64).mean(0).to(torch.float32).contiguous()


def nearest_index(
    queries: torch.Tensor,
    references: torch.Tensor,
    block_queries: int = 1024,
    block_refs: int = 8192,
    exact: bool = False,
) -> torch.Tensor:
    """Index [q] int64 of the nearest reference. ``block_*`` are accepted for the dispatch
    signature; the kernel uses its own tiles. ``exact`` selects fp32 products instead of tf32."""
    q = queries.contiguous()
    r = references.contiguous()
    if q.dtype == torch.float64:
        q = q.float()
    if r.dtype == torch.float64:
        r = r.float()
    n_q, dim = q.shape
    n_r = r.shape[0]
    shift = sampled_centre(r)
    block_q = 16 if n_q <= 16 else (32 if n_q <= 32 else 64)
    block_r = 64
    block_d = max(16, min(64, triton.next_power_of_2(dim)))
    q_blocks = triton.cdiv(n_q, block_q)
    r_blocks = triton.cdiv(n_r, block_r)
    # enough programs to fill the device: ~4 per SM on CUDA, a handful under the interpreter
    target = 4 * torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
    n_split = max(1, min(r_blocks, triton.cdiv(target, q_blocks)))
    refs_per_split = triton.cdiv(r_blocks, n_split) * block_r
    n_split = triton.cdiv(n_r, refs_per_split)
    best = torch.empty((n_split, n_q), dtype=torch.float32, device=q.device)
    index = torch.empty((n_split, n_q), dtype=torch.int64, device=q.device)
    _nearest_kernel[(q_blocks, n_split)](
        q, r, shift, best, index, n_q, n_r, dim, q.stride(0), r.stride(0), refs_per_split,
        BLOCK_Q=block_q, BLOCK_R=block_r, BLOCK_D=block_d,
        PRECISION="ieee" if (exact or not q.is_cuda) else "tf32", num_warps=_NUM_WARPS,
    )
    split = best.argmin(dim=0)  # first split on ties -> smallest index
    return index.gather(0, split[None, :])[0]
