"""Triton pair passes for DBSCAN on CUDA: the ``triton`` backend of ``inform_fast.detect.dbscan``.

The algorithm (near pass, far pass, unions, joins, borders) lives in
``inform_fast.detect.dbscan._core_and_roots``; it asks a *pair engine* for two passes over index
sets ``rows`` x ``cols`` of the index's points (``inform_fast.spatial.LeafIndex``).
``TritonTiles`` runs each as one kernel over [BLOCK_M, BLOCK_N] tiles: the points are centred on
the rows' mean while loaded, the squared distance ``|a|^2 + |b|^2 - 2 a.b`` is computed in
registers with exact fp32 products, and the epilogue compares it with ``eps^2`` widened by the
row's error band (``spatial.tile_band``), so no tile is ever stored:

* ``_neighbour_kernel``: certain neighbours (below the band) are counted per row with one atomic
  add per row and program, and their column ids appended to the row's list at the slots that add
  reserved (a cumulative sum orders them), while the list has room;
* ``_hook_kernel``: union-find hooking. With ``root`` a snapshot of the compressed forest, every
  certain edge (i, j) with root[i] != root[j] proposes the smaller root as the parent of the
  larger one (``atomic_min`` on ``parent``); launches repeat until one changes nothing.

Pairs inside the band are appended to a buffer (an atomic counter reserves the slots) and decided
on the host by the exact float64 test, as on the CPU, so the GPU's result is the exact one too.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from inform_fast.spatial import LeafIndex, tile_band


@triton.jit
def _tile(x_ptr, centre_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, band_ptr, eps2,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's tile: (offsets in rows / cols, point positions, masks, d2 [BLOCK_M, BLOCK_N],
    band [BLOCK_M]) with d2 the squared distances of the centred points."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < n_rows
    mask_n = offs_n < n_cols
    rows = tl.load(rows_ptr + offs_m, mask=mask_m, other=0)
    cols = tl.load(cols_ptr + offs_n, mask=mask_n, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    a_norm = tl.zeros((BLOCK_M,), tl.float32)
    b_norm = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, n_dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < n_dim
        centre = tl.load(centre_ptr + offs_d, mask=mask_d, other=0.0)
        # 64-bit row offsets: n * dim can pass 2^31
        a = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(x_ptr + cols.to(tl.int64)[:, None] * stride + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        a = tl.where(mask_m[:, None] & mask_d[None, :], a - centre[None, :], 0.0)
        b = tl.where(mask_n[:, None] & mask_d[None, :], b - centre[None, :], 0.0)
        a_norm += tl.sum(a * a, axis=1)
        b_norm += tl.sum(b * b, axis=1)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    d2 = a_norm[:, None] + b_norm[None, :] - 2.0 * acc
    band = tl.load(band_ptr + offs_m, mask=mask_m, other=0.0)
    valid = mask_m[:, None] & mask_n[None, :] & (rows[:, None] != cols[None, :])
    return offs_m, offs_n, rows, cols, mask_m, d2, band, valid


@triton.jit
def _append_uncertain(maybe, offs_m, offs_n, pairs_ptr, pair_count_ptr, capacity):
    """Append the (row offset, column offset) of every ``maybe`` pair to the buffer: each row with
    such pairs reserves its slots with one atomic add, a cumulative sum along the row places them
    (entries past ``capacity`` are dropped; the host sees the count and retries larger)."""
    flags = maybe.to(tl.int32)
    per_row = tl.sum(flags, axis=1)
    base = tl.atomic_add(pair_count_ptr + tl.zeros_like(per_row), per_row, mask=per_row > 0)
    slot = (base[:, None] + tl.cumsum(flags, axis=1) - 1).to(tl.int64)
    keep = maybe & (slot < capacity)
    tl.store(pairs_ptr + 2 * slot, tl.broadcast_to(offs_m[:, None], maybe.shape).to(tl.int64), mask=keep)
    tl.store(pairs_ptr + 2 * slot + 1, tl.broadcast_to(offs_n[None, :], maybe.shape).to(tl.int64), mask=keep)


@triton.jit
def _neighbour_kernel(
    x_ptr,  # [n, dim] float32, the index's points (frame, leaf order)
    centre_ptr,  # [dim] float32, subtracted from both sides (the rows' mean, or zeros)
    rows_ptr,  # [n_rows] int64 positions
    cols_ptr,  # [n_cols] int64 positions
    ids_ptr,  # [n] int64: original row of each position
    band_ptr,  # [n_rows] float32 error band of each row's squared distances
    counts_ptr,  # [n] int32 in/out, by original row: neighbours found
    lists_ptr,  # [n, cap] int32 in/out: neighbour ids, while count < cap
    pairs_ptr,  # [capacity, 2] int64 out: (row offset, column offset) of the pairs to test exactly
    pair_count_ptr,  # [1] int32 in/out
    n_rows,
    n_cols,
    n_dim,
    stride,
    eps2,
    cap,
    capacity,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_m, offs_n, rows, cols, mask_m, d2, band, valid = _tile(
        x_ptr, centre_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, band_ptr, eps2, BLOCK_M, BLOCK_N, BLOCK_D)
    sure = valid & (d2 <= eps2 - band[:, None])
    maybe = valid & (d2 > eps2 - band[:, None]) & (d2 <= eps2 + band[:, None])
    row_ids = tl.load(ids_ptr + rows, mask=mask_m, other=0)
    col_ids = tl.load(ids_ptr + cols, mask=offs_n < n_cols, other=0)
    hits = sure.to(tl.int32)
    first = tl.atomic_add(counts_ptr + row_ids, tl.sum(hits, axis=1), mask=mask_m)
    slot = first[:, None] + tl.cumsum(hits, axis=1) - 1
    tl.store(lists_ptr + row_ids.to(tl.int64)[:, None] * cap + slot, col_ids[None, :].to(tl.int32), mask=sure & (slot < cap))
    _append_uncertain(maybe, offs_m, offs_n, pairs_ptr, pair_count_ptr, capacity)


@triton.jit
def _hook_kernel(
    x_ptr,  # [n, dim] float32, the index's points
    centre_ptr,  # [dim] float32
    rows_ptr,  # [n_rows] int64 positions
    cols_ptr,  # [n_cols] int64 positions
    ids_ptr,  # [n] int64: original row of each position
    band_ptr,  # [n_rows] float32
    root_ptr,  # [n] int64: snapshot of the compressed forest (read only), by original row
    parent_ptr,  # [n] int64 in/out: hooked with atomic_min at snapshot roots only
    pairs_ptr,  # [capacity, 2] int64 out: pairs to test exactly
    pair_count_ptr,  # [1] int32 in/out
    n,
    n_rows,
    n_cols,
    n_dim,
    stride,
    eps2,
    capacity,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_m, offs_n, rows, cols, mask_m, d2, band, valid = _tile(
        x_ptr, centre_ptr, rows_ptr, cols_ptr, n_rows, n_cols, n_dim, stride, band_ptr, eps2, BLOCK_M, BLOCK_N, BLOCK_D)
    mask_n = offs_n < n_cols
    row_ids = tl.load(ids_ptr + rows, mask=mask_m, other=0)
    col_ids = tl.load(ids_ptr + cols, mask=mask_n, other=0)
    root_m = tl.load(root_ptr + row_ids, mask=mask_m, other=n)
    root_n = tl.load(root_ptr + col_ids, mask=mask_n, other=n)
    apart = root_m[:, None] != root_n[None, :]
    hit = valid & apart & (d2 <= eps2 - band[:, None])
    maybe = valid & apart & (d2 > eps2 - band[:, None]) & (d2 <= eps2 + band[:, None])
    # both directions, so a pass over rows x cols needs no second pass over cols x rows
    lowest_for_m = tl.min(tl.where(hit, root_n[None, :], n), axis=1)
    tl.atomic_min(parent_ptr + root_m, lowest_for_m, mask=mask_m & (lowest_for_m < root_m))
    lowest_for_n = tl.min(tl.where(hit, root_m[:, None], n), axis=0)
    tl.atomic_min(parent_ptr + root_n, lowest_for_n, mask=mask_n & (lowest_for_n < root_n))
    _append_uncertain(maybe, offs_m, offs_n, pairs_ptr, pair_count_ptr, capacity)


def compress(parent: torch.Tensor) -> None:
    """Pointer jumping in place until every entry is its root (parent[i] <= i keeps it acyclic)."""
    while True:
        jumped = parent[parent]
        if torch.equal(jumped, parent):
            return
        parent.copy_(jumped)


# 8 warps: with 4, ptxas spills the 32 x 64 tile on sm_90 (41-45 local stores); with 8, none
_NUM_WARPS = 8
_ROW_BLOCK = 4096  # rows per launch (the grid covers rows x cols)


class TritonTiles:
    """The pair engine of ``inform_fast.detect.dbscan._core_and_roots`` on the GPU (or on CPU
    tensors under TRITON_INTERPRET=1, for tests); see the module docstring. Full tiles only: the
    lower-bound tiles of the CPU engine save little where one fp32 pass costs what it does on a
    GPU (``docs/performance.md``, GPU design).

    Args:
        index: the points' leaf index, on the kernels' device, float32 frame.
        points: the original values on the host (the exact test).
        eps: neighbourhood radius in the original units.
    """

    workers = 1

    def __init__(self, index: LeafIndex, points: torch.Tensor, eps: float):
        if index.dtype != torch.float32:
            raise NotImplementedError("TritonTiles: the radius needs a float64 frame; use the cpp or reference backend")
        self.index = index
        self.points = points
        # the kernels address the frame points by position: the index's frame copy (DBSCAN's
        # Triton backend builds its index with one), else one made here, on the kernels' device
        self.frame_points = index.frame_points()
        self.exact_scale = index.frame.exact_scale
        self.eps_exact2 = (eps * self.exact_scale) ** 2
        self.eps2 = (eps * index.frame.scale) ** 2
        self.pairs = 0
        self.filtered_pairs = 0
        self.exact_tests = 0
        device = self.frame_points.device
        # 32 x 64 tiles at 8 warps: ptxas keeps everything in registers on sm_90 (64 x 64 spilled 6-10
        # local stores, ``resource_report``); the interpreter runs one program at a time, 32 x 32
        self.meta = dict(BLOCK_M=32, BLOCK_N=64 if self.frame_points.is_cuda else 32,
                         BLOCK_D=max(16, min(64, triton.next_power_of_2(self.frame_points.shape[1]))))
        self.pair_count = torch.zeros(1, dtype=torch.int32, device=device)
        self.capacity = 1 << 16
        self.pair_buffer = torch.empty((self.capacity, 2), dtype=torch.int64, device=device)
        self.zero_centre = torch.zeros(self.frame_points.shape[1], dtype=torch.float32, device=device)
        self.leaf_of_position = index.leaf_of_position()

    def _band(self, rows: torch.Tensor, cols: torch.Tensor):
        """(centre, band [R]) for rows against cols: centred on the rows' mean, the columns' norms
        bounded from their leaves' balls."""
        index = self.index
        r = self.frame_points.index_select(0, rows)
        centre = r.mean(0)
        local = (r - centre).norm(dim=1).to(torch.float64) * (1 + 1e-5)
        col_leaves = torch.unique(self.leaf_of_position[cols])
        reach = float(((index.centre[col_leaves] - centre.to(torch.float64)).norm(dim=1) + index.radius[col_leaves]).max())
        band = tile_band(index.frame, self.frame_points.shape[1], local, reach, index.norms[rows], float(index.norms[cols].max()))
        return centre.contiguous(), (band * (1 + 1e-6)).to(torch.float32)

    def _launch(self, kernel, rows, cols, *args):
        grid = (triton.cdiv(rows.numel(), self.meta["BLOCK_M"]), triton.cdiv(cols.numel(), self.meta["BLOCK_N"]))
        kernel[grid](*args, **self.meta, num_warps=_NUM_WARPS)

    def _uncertain(self, rows: torch.Tensor, cols: torch.Tensor):
        """(row ids, col ids) of the buffered pairs that pass the exact test; resets the buffer."""
        found = int(self.pair_count.item())
        self.pair_count.zero_()
        if found > self.capacity:
            raise OverflowError(found)
        pairs = self.pair_buffer[:found].cpu()
        self.exact_tests += found
        order = self.index.order.cpu()
        a = order[rows.cpu()[pairs[:, 0]]]
        b = order[cols.cpu()[pairs[:, 1]]]
        diff = self.points[a].to(torch.float64) * self.exact_scale - self.points[b].to(torch.float64) * self.exact_scale
        hit = (diff * diff).sum(1) <= self.eps_exact2
        return a[hit], b[hit]

    def _pieces(self, rows: torch.Tensor, cols: torch.Tensor):
        """Row blocks of at most _ROW_BLOCK rows (nothing for an empty side)."""
        if cols.numel() == 0:
            return
        for r0 in range(0, rows.numel(), _ROW_BLOCK):
            yield rows[r0 : r0 + _ROW_BLOCK], cols

    def release_scratch(self) -> None:
        """Nothing to release: the kernels' buffers live with the index."""

    def neighbours(self, rows, cols, counts, lists, mode: str = "full", need=None) -> None:
        index = self.index
        for r, c in self._pieces(rows, cols):
            centre, band = self._band(r, c)
            while True:
                saved = (counts.clone(), lists.clone())
                self._launch(_neighbour_kernel, r, c, self.frame_points, centre, r, c, index.order, band, counts, lists,
                             self.pair_buffer, self.pair_count, r.numel(), c.numel(), self.frame_points.shape[1],
                             self.frame_points.stride(0), self.eps2, lists.shape[1], self.capacity)
                try:
                    a, b = self._uncertain(r, c)
                    break
                except OverflowError as error:  # more pairs in the band than the buffer holds: redo, larger
                    counts.copy_(saved[0])
                    lists.copy_(saved[1])
                    self.pair_count.zero_()
                    self.capacity = max(2 * self.capacity, int(error.args[0]))
                    self.pair_buffer = torch.empty((self.capacity, 2), dtype=torch.int64, device=self.frame_points.device)
            self.pairs += r.numel() * c.numel()
            if a.numel():
                _append(counts, lists, a.to(counts.device), b.to(counts.device))

    def union(self, rows, cols, parent, mode: str = "full", stop=None) -> None:
        index = self.index
        for r, c in self._pieces(rows, cols):
            if stop is not None and stop():
                return
            centre, band = self._band(r, c)
            self.pairs += r.numel() * c.numel()
            while True:
                root = parent.clone()
                self._launch(_hook_kernel, r, c, self.frame_points, centre, r, c, index.order, band, root, parent,
                             self.pair_buffer, self.pair_count, parent.numel(), r.numel(), c.numel(),
                             self.frame_points.shape[1], self.frame_points.stride(0), self.eps2, self.capacity)
                try:
                    a, b = self._uncertain(r, c)
                except OverflowError as error:
                    parent.copy_(root)
                    self.pair_count.zero_()
                    self.capacity = max(2 * self.capacity, int(error.args[0]))
                    self.pair_buffer = torch.empty((self.capacity, 2), dtype=torch.int64, device=self.frame_points.device)
                    continue
                changed = not torch.equal(parent, root)
                if a.numel():
                    from inform_fast.spatial import union_roots

                    host = parent.cpu()
                    compress(host)
                    before = host.clone()
                    union_roots(host, a, b)
                    changed = changed or not torch.equal(host, before)
                    parent.copy_(host.to(parent.device))
                if not changed:
                    break
                compress(parent)


def _append(counts: torch.Tensor, lists: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """counts[a] += 1 and lists[a] gets b while it has room, for pairs (a, b) (a may repeat)."""
    order = torch.argsort(a, stable=True)
    a, b = a[order], b[order]
    first = torch.searchsorted(a, a)
    slot = counts[a].to(torch.int64) + torch.arange(a.numel(), device=a.device) - first
    keep = slot < lists.shape[1]
    lists[a[keep], slot[keep]] = b[keep].to(torch.int32)
    counts.index_add_(0, a, torch.ones_like(a, dtype=counts.dtype))


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps, scalar types) of the pair kernels as
    ``TritonTiles`` launches them on CUDA at L = 128."""
    meta = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_D=64)
    scalars = {"eps2": "fp32"}
    pointers = {"rows_ptr": "*i64", "cols_ptr": "*i64", "ids_ptr": "*i64", "pairs_ptr": "*i64", "pair_count_ptr": "*i32"}
    return [
        (_neighbour_kernel, {**pointers, "counts_ptr": "*i32", "lists_ptr": "*i32"}, meta, _NUM_WARPS, scalars),
        (_hook_kernel, {**pointers, "root_ptr": "*i64", "parent_ptr": "*i64"}, meta, _NUM_WARPS, scalars),
    ]
