"""Triton exact nearest-reference search on CUDA: two passes over the references, never storing
the [q, m] matrix (``inform_fast.detect.neighbors``' ``triton`` backend for k = 1).

1. ``_nearest_kernel``: per query, the smallest ``||r||^2 - 2 q.r`` (exact fp32 products) of the
   shifted, scaled points, min-reduced in the epilogue of each [BLOCK_Q, BLOCK_R] tile; the
   reference axis is split across programs (grid = query blocks x reference splits) so that a few
   queries against millions of references still fill the GPU.
2. ``_within_kernel``: the same tiles again, appending every (query, reference) whose value is
   within twice the error band (``spatial.tile_band``) of that minimum to a buffer; the exact
   nearest reference is among them, and the exact float64 test of those few (on the GPU, from the
   original values) picks it, ties to the smallest index.

The conditioning shift (the mean of an evenly strided sample of the references) and the power of
two scale are applied in the kernels as the tiles are loaded, and the references' squared norms
accumulated from the tile already loaded: each pass reads the references once (for 10^7 x 128,
5 GB: a memory-bound search whose cost is its reads).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


# 8 warps: with 4, ptxas spills the 64 x 64 fp32 tile and its operands on sm_90 (174 local stores
# with tf32, 161 with exact products; none with 8 for tf32 at any query block) - ``resource_report``
_NUM_WARPS = 8


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps, scalar types) as ``nearest_exact`` launches
    them on CUDA at dim = 128: 32 and 16 queries a block, exact products."""
    scalars = {"scale": "fp32"}
    configs = [(_nearest_kernel, {"index_ptr": "*i64"}, dict(BLOCK_Q=block_q, BLOCK_R=64, BLOCK_D=64, PRECISION="ieee"), _NUM_WARPS, scalars)
               for block_q in (32, 16)]
    configs.append((_within_kernel, {"pairs_ptr": "*i64", "count_ptr": "*i32"}, dict(BLOCK_Q=64, BLOCK_R=64, BLOCK_D=64),
                    _NUM_WARPS, scalars))
    return configs



@triton.jit
def _partial_tile(q_ptr, r_ptr, shift_ptr, scale, offs_q, mask_q, offs_r, mask_r, dim, stride_q, stride_r,
                  BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """[BLOCK_Q, BLOCK_R] ||r||^2 - 2 q.r of the shifted, scaled points (||r||^2 accumulated from
    the tile already loaded)."""
    acc = tl.zeros((BLOCK_Q, BLOCK_R), tl.float32)
    rn = tl.zeros((BLOCK_R,), tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < dim
        shift = tl.load(shift_ptr + offs_d, mask=mask_d, other=0.0)
        q = tl.load(q_ptr + offs_q.to(tl.int64)[:, None] * stride_q + offs_d[None, :], mask=mask_q[:, None] & mask_d[None, :], other=0.0)
        # 64-bit row offsets: n_r * dim can pass 2^31
        r = tl.load(r_ptr + offs_r.to(tl.int64)[:, None] * stride_r + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        q = tl.where(mask_q[:, None] & mask_d[None, :], (q.to(tl.float32) - shift[None, :]) * scale, 0.0)
        r = tl.where(mask_r[:, None] & mask_d[None, :], (r.to(tl.float32) - shift[None, :]) * scale, 0.0)
        rn += tl.sum(r * r, axis=1)
        acc += tl.dot(q, tl.trans(r), input_precision=PRECISION)
    return rn[None, :] - 2.0 * acc


@triton.jit
def _nearest_kernel(
    q_ptr,  # [n_q, dim] queries
    r_ptr,  # [n_r, dim] references
    shift_ptr,  # [dim] float32, subtracted from both sets (near the reference mean: less cancellation)
    scale,  # power of two applied after the shift (no float32 overflow at any magnitude)
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
        partial = _partial_tile(q_ptr, r_ptr, shift_ptr, scale, offs_q, mask_q, offs_r, mask_r, dim, stride_q, stride_r,
                                BLOCK_Q, BLOCK_R, BLOCK_D, PRECISION)
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


@triton.jit
def _within_kernel(
    q_ptr,  # [n_q, dim] queries
    r_ptr,  # [n_r, dim] references
    shift_ptr,  # [dim] float32
    scale,
    limit_ptr,  # [n_q] float32: keep references with ||r||^2 - 2 q.r <= limit
    pairs_ptr,  # [capacity, 2] int64 out: (query, reference)
    count_ptr,  # [1] int32 in/out
    n_q,
    n_r,
    dim,
    stride_q,
    stride_r,
    capacity,
    BLOCK_Q: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_q = offs_q < n_q
    mask_r = offs_r < n_r
    partial = _partial_tile(q_ptr, r_ptr, shift_ptr, scale, offs_q, mask_q, offs_r, mask_r, dim, stride_q, stride_r,
                            BLOCK_Q, BLOCK_R, BLOCK_D, "ieee")
    limit = tl.load(limit_ptr + offs_q, mask=mask_q, other=float("-inf"))
    keep = (partial <= limit[:, None]) & mask_q[:, None] & mask_r[None, :]
    flat = tl.reshape(keep.to(tl.int32), (BLOCK_Q * BLOCK_R,))
    base = tl.atomic_add(count_ptr, tl.sum(flat, axis=0))
    slot = (base + tl.cumsum(flat, axis=0) - 1).to(tl.int64)
    qi = tl.reshape(tl.broadcast_to(offs_q[:, None], (BLOCK_Q, BLOCK_R)), (BLOCK_Q * BLOCK_R,)).to(tl.int64)
    ri = tl.reshape(tl.broadcast_to(offs_r[None, :], (BLOCK_Q, BLOCK_R)), (BLOCK_Q * BLOCK_R,)).to(tl.int64)
    ok = (flat > 0) & (slot < capacity)
    tl.store(pairs_ptr + 2 * slot, qi, mask=ok)
    tl.store(pairs_ptr + 2 * slot + 1, ri, mask=ok)


def _minima(q, r, shift, scale, block_q, block_r, block_d, precision):
    """Per query: (smallest ||r||^2 - 2 q.r [n_q] float32, its index [n_q] int64)."""
    n_q, dim = q.shape
    n_r = r.shape[0]
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
        q, r, shift, scale, best, index, n_q, n_r, dim, q.stride(0), r.stride(0), refs_per_split,
        BLOCK_Q=block_q, BLOCK_R=block_r, BLOCK_D=block_d, PRECISION=precision, num_warps=_NUM_WARPS,
    )
    split = best.argmin(dim=0)
    return best.gather(0, split[None, :])[0], index.gather(0, split[None, :])[0]


def nearest_exact(queries: torch.Tensor, references: torch.Tensor, exact_scale: float = 1.0):
    """(exact squared distance [q] float64 times exact_scale^2, index [q] int64) of each query's
    nearest reference, ties to the smallest index; queries / references: [n, dim] on the GPU (or
    CPU tensors under the interpreter), any float dtype (the exact test reads them in float64)."""
    from inform_fast.spatial import fit_frame, tile_band

    q = queries.contiguous()
    r = references.contiguous()
    frame = fit_frame(r, also=q, axes=False)
    if q.dtype == torch.float64 or r.dtype == torch.float64:
        # float64 values rounded to float32 first would lose what the shift is for: shift on the host
        q_in, r_in = frame.apply(q), frame.apply(r)
        shift, scale = torch.zeros(q.shape[1], dtype=torch.float32, device=q.device), 1.0
    else:
        q_in, r_in = q, r  # shifted and scaled in the kernels as loaded, rounded once as frame.apply does
        shift, scale = frame.mean.to(device=q.device, dtype=torch.float32).contiguous(), float(frame.scale)
    n_q, dim = q.shape
    # exact fp32 products: 64-query blocks spill on sm_90 (17 local stores), 32 do not
    block_q = 16 if n_q <= 16 else 32
    block_r = 64
    block_d = max(16, min(64, triton.next_power_of_2(dim)))
    best, _ = _minima(q_in, r_in, shift, scale, block_q, block_r, block_d, "ieee")
    # the band of the squared distances, from the norms in the frame (the reference side's largest)
    q_norm = (((q.to(torch.float64) - frame.mean.to(q.device)) * scale).norm(dim=1)) * (1 + 1e-5)
    r_norm = max(float(((r[a : a + 65536].to(torch.float64) - frame.mean.to(r.device)) * scale).norm(dim=1).max())
                 for a in range(0, r.shape[0], 65536)) * (1 + 1e-5)
    band = tile_band(frame, dim, q_norm, r_norm, q_norm, r_norm)
    limit = (best.to(torch.float64) + 2.0 * band) * (1 + 1e-6)
    capacity = max(1024, 4 * n_q)
    while True:
        pairs = torch.empty((capacity, 2), dtype=torch.int64, device=q.device)
        count = torch.zeros(1, dtype=torch.int32, device=q.device)
        grid = (triton.cdiv(n_q, 64), triton.cdiv(r.shape[0], block_r))
        _within_kernel[grid](q_in, r_in, shift, scale, limit.to(torch.float32), pairs, count, n_q, r.shape[0], dim,
                             q_in.stride(0), r_in.stride(0), capacity, BLOCK_Q=64, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=_NUM_WARPS)
        found = int(count.item())
        if found <= capacity:
            break
        capacity = found
    pairs = pairs[:found]
    diff = q[pairs[:, 0]].to(torch.float64) * exact_scale - r[pairs[:, 1]].to(torch.float64) * exact_scale
    d2 = (diff * diff).sum(1)
    # per query the smallest (d2, index): sort by index, then stably by d2, then by query
    order = torch.argsort(pairs[:, 1], stable=True)
    order = order[torch.argsort(d2[order], stable=True)]
    order = order[torch.argsort(pairs[order, 0], stable=True)]
    first = torch.ones(order.numel(), dtype=torch.bool, device=q.device)
    first[1:] = pairs[order[1:], 0] != pairs[order[:-1], 0]
    winners = order[first]
    out_d2 = torch.empty(n_q, dtype=torch.float64, device=q.device)
    out_index = torch.empty(n_q, dtype=torch.int64, device=q.device)
    out_d2[pairs[winners, 0]] = d2[winners]
    out_index[pairs[winners, 0]] = pairs[winners, 1]
    return out_d2, out_index
