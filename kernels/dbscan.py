"""Triton DBSCAN on CUDA: a tiled eps-neighbour count and a tiled min-label propagation.

* ``_count_kernel``: grid over [BLOCK_M, BLOCK_N] tiles of the n x n distance matrix (never
  stored): d2 = ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, neighbours counted per row with an atomic add.
* ``_propagate_kernel``: for every row i, the smallest label among its *core* neighbours j
  (labels start as the point's own index for core points, n otherwise), folded into label[i]
  with an atomic min. Between launches the labels are pointer-jumped (label = label[label]);
  when a launch changes nothing every core point holds the smallest core index of its cluster
  and every border point the label of one of its core neighbours (the smallest).

``dbscan_roots`` returns (core [n] bool, root [n] int64, -1 for noise) like the CPU backends;
``inform_fast.detect.dbscan.dbscan`` numbers the clusters.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tile_d2(x_ptr, xn_ptr, offs_m, offs_n, mask_m, mask_n, n_dim, stride, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    acc = tl.zeros((offs_m.shape[0], offs_n.shape[0]), tl.float32)
    for d0 in range(0, n_dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < n_dim
        a = tl.load(x_ptr + offs_m[:, None] * stride + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(x_ptr + offs_n[:, None] * stride + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    xm = tl.load(xn_ptr + offs_m, mask=mask_m, other=0.0)
    xn = tl.load(xn_ptr + offs_n, mask=mask_n, other=0.0)
    return xm[:, None] + xn[None, :] - 2.0 * acc  # [BLOCK_M, BLOCK_N]


def compile_check(capability: int = 90) -> list[str]:
    """Compile the count and propagation kernels for an NVIDIA GPU without one."""
    from inform_fast.kernels._compile import compile_for_gpu

    meta = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, PRECISION="ieee")
    scalars = {"eps2": "fp32"}
    return [
        compile_for_gpu(_count_kernel, {"count_ptr": "*i32"}, meta, scalars, capability=capability),
        compile_for_gpu(_propagate_kernel, {"core_ptr": "*i8", "label_ptr": "*i64"}, meta, scalars, capability=capability),
    ]


@triton.jit
def _count_kernel(
    x_ptr,  # [n, dim] float32, centred
    xn_ptr,  # [n] float32 squared norms
    count_ptr,  # [n] int32 out (zeroed): eps-neighbours, the point itself included
    n,
    n_dim,
    stride,
    eps2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < n
    mask_n = offs_n < n
    d2 = _tile_d2(x_ptr, xn_ptr, offs_m, offs_n, mask_m, mask_n, n_dim, stride, BLOCK_D, PRECISION)
    hit = ((d2 <= eps2) | (offs_m[:, None] == offs_n[None, :])) & mask_m[:, None] & mask_n[None, :]
    tl.atomic_add(count_ptr + offs_m, tl.sum(hit.to(tl.int32), axis=1), mask=mask_m)


@triton.jit
def _propagate_kernel(
    x_ptr,  # [n, dim] float32, centred
    xn_ptr,  # [n] float32 squared norms
    core_ptr,  # [n] int8: 1 for core points
    label_ptr,  # [n] int64 in/out: current label (n = none yet)
    n,
    n_dim,
    stride,
    eps2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < n
    mask_n = offs_n < n
    core_n = tl.load(core_ptr + offs_n, mask=mask_n, other=0) != 0
    label_n = tl.load(label_ptr + offs_n, mask=mask_n, other=n)
    d2 = _tile_d2(x_ptr, xn_ptr, offs_m, offs_n, mask_m, mask_n, n_dim, stride, BLOCK_D, PRECISION)
    hit = (d2 <= eps2) & core_n[None, :] & mask_n[None, :]
    candidate = tl.min(tl.where(hit, label_n[None, :], n), axis=1)  # [BLOCK_M]
    label_m = tl.load(label_ptr + offs_m, mask=mask_m, other=n)
    lower = mask_m & (candidate < label_m)
    tl.atomic_min(label_ptr + offs_m, candidate, mask=lower)


def dbscan_roots(x: torch.Tensor, eps: float, min_samples: int, block: int = 0, exact: bool = True, max_rounds: int = 10_000):
    """(core [n] bool, root [n] int64: smallest core index of the cluster, -1 for noise).

    ``block`` is accepted for the dispatch signature. ``exact`` keeps fp32 products (tf32 would
    move points across the eps boundary); the data are centred first to limit cancellation.
    """
    x = x.detach().float()
    x = (x - x.mean(0)).contiguous()
    n, n_dim = x.shape
    xn = x.square().sum(1)
    eps2 = float(eps) * float(eps)
    block_m, block_n = (64, 64) if x.is_cuda else (16, 16)
    block_d = max(16, min(64, triton.next_power_of_2(n_dim)))
    grid = (triton.cdiv(n, block_m), triton.cdiv(n, block_n))
    precision = "ieee" if (exact or not x.is_cuda) else "tf32"
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision)

    counts = torch.zeros(n, dtype=torch.int32, device=x.device)
    _count_kernel[grid](x, xn, counts, n, n_dim, x.stride(0), eps2, **meta)
    core = counts >= min_samples
    index = torch.arange(n, device=x.device)
    label = torch.where(core, index, torch.full_like(index, n))
    core8 = core.to(torch.int8)
    for _ in range(max_rounds):
        before = label.clone()
        _propagate_kernel[grid](x, xn, core8, label, n, n_dim, x.stride(0), eps2, **meta)
        # pointer jumping: a label is the index of a core point whose label is no larger
        while True:
            safe = label.clamp(max=n - 1)
            jumped = torch.where(label < n, label[safe], label)
            if torch.equal(jumped, label):
                break
            label = jumped
        if torch.equal(label, before):
            break
    else:  # pragma: no cover - the propagation converges in O(diameter) rounds
        raise RuntimeError(f"dbscan: label propagation did not converge in {max_rounds} rounds")
    root = torch.where(label < n, label, torch.full_like(label, -1))
    return core, root
