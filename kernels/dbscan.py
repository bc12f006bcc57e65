"""Triton pair passes for DBSCAN on CUDA: the ``triton`` backend of ``inform_fast.detect.dbscan``.

The algorithm (certain-core sample, seed components, ball pruning, late core points, borders)
lives in ``inform_fast.detect.dbscan._core_and_roots``; it asks a *pair engine* for three passes
over index sets ``rows`` x ``cols`` of the centred points. ``TritonPairs`` runs each as one
kernel over [BLOCK_M, BLOCK_N] tiles, the squared distance d2 = ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j
computed in registers and reduced in the epilogue, so no tile is ever stored:

* ``_count_kernel``: eps-neighbours per row (the point itself excluded), an atomic add;
* ``_hook_kernel``: union-find hooking. With ``root`` a snapshot of the compressed forest, every
  edge (i, j) with root[i] != root[j] proposes the smaller root as the parent of the larger one
  (``atomic_min`` on ``parent``). Only snapshot roots are written, so links made by earlier
  passes are never overwritten; a proposal that loses the min race is found again in the next
  launch. Launches repeat (with pointer jumping in between) until one changes nothing;
* ``_first_neighbour_kernel``: for each border row, the smallest core position within eps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tile_d2(x_ptr, xn_ptr, rows, cols, mask_m, mask_n, n_dim, stride, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """[BLOCK_M, BLOCK_N] squared distances between points ``rows`` and ``cols`` (indices into x)."""
    acc = tl.zeros((rows.shape[0], cols.shape[0]), tl.float32)
    for d0 in range(0, n_dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < n_dim
        a = tl.load(x_ptr + rows[:, None] * stride + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(x_ptr + cols[:, None] * stride + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    xm = tl.load(xn_ptr + rows, mask=mask_m, other=0.0)
    xn = tl.load(xn_ptr + cols, mask=mask_n, other=0.0)
    return xm[:, None] + xn[None, :] - 2.0 * acc


@triton.jit
def _tile_hits(x_ptr, xn_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, eps2,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """This program's tile: (positions in rows, positions in cols, point indices of both, masks,
    hit [BLOCK_M, BLOCK_N] = within eps and both in range)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < n_rows
    mask_n = offs_n < n_cols
    rows = tl.load(rows_ptr + offs_m, mask=mask_m, other=0)
    cols = tl.load(cols_ptr + offs_n, mask=mask_n, other=0)
    d2 = _tile_d2(x_ptr, xn_ptr, rows, cols, mask_m, mask_n, n_dim, stride, BLOCK_D, PRECISION)
    hit = (d2 <= eps2) & mask_m[:, None] & mask_n[None, :]
    return offs_m, offs_n, rows, cols, mask_m, mask_n, hit


@triton.jit
def _count_kernel(
    x_ptr,  # [n, dim] float32, centred
    xn_ptr,  # [n] float32 squared norms
    rows_ptr,  # [n_rows] int64 point indices
    cols_ptr,  # [n_cols] int64 point indices
    count_ptr,  # [n_rows] int32 out (zeroed): eps-neighbours among cols, the point itself excluded
    n_rows,
    n_cols,
    n_dim,
    stride,
    eps2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    offs_m, offs_n, rows, cols, mask_m, mask_n, hit = _tile_hits(
        x_ptr, xn_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, eps2, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    hit = hit & (rows[:, None] != cols[None, :])
    tl.atomic_add(count_ptr + offs_m, tl.sum(hit.to(tl.int32), axis=1), mask=mask_m)


@triton.jit
def _hook_kernel(
    x_ptr,  # [n, dim] float32, centred
    xn_ptr,  # [n] float32 squared norms
    rows_ptr,  # [n_rows] int64 point indices
    cols_ptr,  # [n_cols] int64 point indices
    root_ptr,  # [n] int64: snapshot of the compressed forest (read only)
    parent_ptr,  # [n] int64 in/out: hooked with atomic_min at snapshot roots only
    n,
    n_rows,
    n_cols,
    n_dim,
    stride,
    eps2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    offs_m, offs_n, rows, cols, mask_m, mask_n, hit = _tile_hits(
        x_ptr, xn_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, eps2, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    root_m = tl.load(root_ptr + rows, mask=mask_m, other=n)
    root_n = tl.load(root_ptr + cols, mask=mask_n, other=n)
    # both directions, so a pass over rows x cols needs no second pass over cols x rows
    lowest_for_m = tl.min(tl.where(hit, root_n[None, :], n), axis=1)
    tl.atomic_min(parent_ptr + root_m, lowest_for_m, mask=mask_m & (lowest_for_m < root_m))
    lowest_for_n = tl.min(tl.where(hit, root_m[:, None], n), axis=0)
    tl.atomic_min(parent_ptr + root_n, lowest_for_n, mask=mask_n & (lowest_for_n < root_n))


@triton.jit
def _first_neighbour_kernel(
    x_ptr,  # [n, dim] float32, centred
    xn_ptr,  # [n] float32 squared norms
    rows_ptr,  # [n_rows] int64 border point indices
    cols_ptr,  # [n_cols] int64 core point indices, ascending
    first_ptr,  # [n_rows] int64 in/out (n_cols = none): smallest core position within eps
    n_rows,
    n_cols,
    n_dim,
    stride,
    eps2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    offs_m, offs_n, rows, cols, mask_m, mask_n, hit = _tile_hits(
        x_ptr, xn_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, eps2, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    first = tl.min(tl.where(hit, offs_n[None, :].to(tl.int64), n_cols), axis=1)
    tl.atomic_min(first_ptr + offs_m, first, mask=mask_m & (first < n_cols))


def compress(parent: torch.Tensor) -> None:
    """Pointer jumping in place until every entry is its root (parent[i] <= i keeps it acyclic)."""
    while True:
        jumped = parent[parent]
        if torch.equal(jumped, parent):
            return
        parent.copy_(jumped)


# 8 warps: with 4, ptxas spills the 64 x 64 distance tile on sm_90 (6-11 local stores a kernel);
# with 8, none (``resource_report``)
_NUM_WARPS = 8


class TritonPairs:
    """The pair engine of ``inform_fast.detect.dbscan._core_and_roots`` on the GPU (or on CPU
    tensors under TRITON_INTERPRET=1, for tests).

    Args:
        x: [n, L] float32, centred (on the device the kernels run on).
        eps: neighbourhood radius.
        exact: keep fp32 products in the distance (default); TF32 would move points across the
            eps boundary, so it is only used on request.
    """

    def __init__(self, x: torch.Tensor, eps: float, exact: bool = True):
        self.x = x
        self.eps = eps
        self.norms = x.square().sum(1)
        self.eps2 = float(eps) * float(eps)
        block = 64 if x.is_cuda else 32  # the interpreter runs one program at a time
        self.meta = dict(
            BLOCK_M=block,
            BLOCK_N=block,
            BLOCK_D=max(16, min(64, triton.next_power_of_2(x.shape[1]))),
            PRECISION="ieee" if (exact or not x.is_cuda) else "tf32",
        )

    def _launch(self, kernel, rows: torch.Tensor, cols: torch.Tensor, *args) -> None:
        grid = (triton.cdiv(rows.numel(), self.meta["BLOCK_M"]), triton.cdiv(cols.numel(), self.meta["BLOCK_N"]))
        kernel[grid](self.x, self.norms, rows, cols, *args, rows.numel(), cols.numel(), self.x.shape[1],
                     self.x.stride(0), self.eps2, **self.meta, num_warps=_NUM_WARPS)

    def count(self, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor) -> None:
        if rows.numel() == 0 or cols.numel() == 0:
            return
        found = torch.zeros(rows.numel(), dtype=torch.int32, device=self.x.device)
        self._launch(_count_kernel, rows, cols, found)
        counts += found

    def union(self, rows: torch.Tensor, cols: torch.Tensor, parent: torch.Tensor, symmetric: bool = False) -> None:
        """``symmetric`` (rows is cols) is accepted for the engine interface: every launch hooks
        both directions, so the full rows x cols grid serves either way."""
        if rows.numel() == 0 or cols.numel() == 0:
            return
        while True:
            root = parent.clone()
            self._launch(_hook_kernel, rows, cols, root, parent, parent.numel())
            if torch.equal(parent, root):
                return
            compress(parent)

    def assign_borders(self, core_index: torch.Tensor, border_index: torch.Tensor, root: torch.Tensor) -> None:
        first = torch.full((border_index.numel(),), core_index.numel(), dtype=torch.int64, device=self.x.device)
        self._launch(_first_neighbour_kernel, border_index, core_index, first)
        found = first < core_index.numel()
        root[border_index[found]] = root[core_index[first[found]]]


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps, scalar types) of the three pair kernels as
    ``TritonPairs`` launches them on CUDA at L = 128 (exact fp32 products, the default)."""
    meta = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, PRECISION="ieee")
    scalars = {"eps2": "fp32"}
    indices = {"rows_ptr": "*i64", "cols_ptr": "*i64"}
    return [
        (_count_kernel, {**indices, "count_ptr": "*i32"}, meta, _NUM_WARPS, scalars),
        (_hook_kernel, {**indices, "root_ptr": "*i64", "parent_ptr": "*i64"}, meta, _NUM_WARPS, scalars),
        (_first_neighbour_kernel, {**indices, "first_ptr": "*i64"}, meta, _NUM_WARPS, scalars),
    ]

