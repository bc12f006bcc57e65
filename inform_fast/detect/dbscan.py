"""DBSCAN over latent matrices, tiled: never an n x n matrix.

Same definition as scikit-learn's ``DBSCAN(eps, min_samples)`` with the Euclidean metric:

* a point is *core* when at least ``min_samples`` points (itself included) lie within ``eps``;
* core points within ``eps`` of each other are in the same cluster (connected components);
* a non-core point within ``eps`` of a core point is a *border* point and joins the cluster of
  one such core point (here: the first found in a fixed order, so the result is deterministic;
  scikit-learn's choice depends on its expansion order, the core partition is the same);
* everything else is noise, label ``-1``.

Clusters are numbered 0, 1, ... in the order of their smallest core point index.

CPU algorithm (``reference`` and ``cpp`` backends): the data are centred (less cancellation);
every tile is a BLAS GEMM giving ``partial = ||c||^2 - 2 r.c``, compared against
``eps^2 - ||r||^2``, over square tiles of ``block`` rows (see ``_dbscan_tiled``):

0. counts against a strided sample of 2048 points find the points that are certainly core;
1. neighbour counts over the upper triangle of tiles (each tile counts for its rows and,
   mirrored, its columns) and, in the same tiles, union-find among the certainly-core points
   (only rows with a neighbour in another component do any work: a vectorised scan against a
   root snapshot finds them, then C++ links them with a live union-find, or the reference emits
   the distinct (root, root) pairs); for dense data this one pass does nearly all the work;
2. the remaining core points against all core points (union);
3. non-core points against core points, for border assignment.

The ``cpp`` backend runs the tile epilogues (threshold, counts, root pairs) and the union-find in
``inform_fast._C`` with OpenMP; the ``reference`` backend does them with PyTorch / NumPy. The
``triton`` backend (CUDA) counts with one kernel and finds components by min-label propagation
with pointer jumping (``inform_fast.kernels.dbscan``).

float64 input is computed in float64 (reference epilogues); everything else in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_positive_int

dispatch.register("dbscan", "reference", "inform_fast.detect.dbscan:_dbscan_reference")
dispatch.register("dbscan", "cpp", "inform_fast.detect.dbscan:_dbscan_cpp")
dispatch.register("dbscan", "triton", "inform_fast.kernels.dbscan:dbscan_roots")

DEFAULT_BLOCK = 4096


@dataclass
class DBSCANResult:
    """labels: [n] int64, cluster id or -1 (noise); core_mask: [n] bool; n_clusters: int."""

    labels: torch.Tensor
    core_mask: torch.Tensor
    n_clusters: int


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    return float(eps)


def dbscan(
    x,
    eps: float = 0.5,
    min_samples: int = 5,
    block: int = DEFAULT_BLOCK,
    backend: Optional[str] = None,
) -> DBSCANResult:
    """Cluster ``x`` [n, L] (tensor or array, any float dtype) with DBSCAN(eps, min_samples).

    ``block`` is the tile side: peak extra memory is about ``block^2`` floats (64 MiB at 4096).
    Returns a DBSCANResult on ``x``'s device.
    """
    x = as_latents("x", x)
    eps = check_eps(eps)
    check_positive_int("min_samples", min_samples)
    check_positive_int("block", block)
    return dbscan_checked(x, eps, min_samples, block, backend)


def dbscan_checked(x: torch.Tensor, eps: float, min_samples: int, block: int = DEFAULT_BLOCK, backend: Optional[str] = None) -> DBSCANResult:
    """``dbscan`` on arguments already validated by the caller (no second pass over ``x``)."""
    _, impl = dispatch.resolve("dbscan", x.device, backend)
    core, root = impl(x, eps, min_samples, block)
    return _number_clusters(core, root)


def _number_clusters(core: torch.Tensor, root: torch.Tensor) -> DBSCANResult:
    """core [n] bool; root [n] int64: index of the smallest core point of the component (-1 noise)."""
    roots = torch.unique(root[core])  # sorted: cluster k has the k-th smallest first core index
    labels = torch.full_like(root, -1)
    assigned = root >= 0
    labels[assigned] = torch.searchsorted(roots, root[assigned])
    return DBSCANResult(labels=labels, core_mask=core, n_clusters=int(roots.numel()))


class _TorchEpilogue:
    """Tile epilogues and union-find in PyTorch / NumPy (the reference)."""

    def counts(self, partial, thr, count_rows, count_cols):
        hit = partial <= thr[:, None]
        count_rows += hit.sum(1)
        if count_cols is not None:
            count_cols += hit.sum(0)

    def root_edges(self, partial, thr, root_rows, root_cols, n_roots):
        hit = (partial <= thr[:, None]) & (root_rows[:, None] != root_cols[None, :])
        i, j = torch.nonzero(hit, as_tuple=True)
        if i.numel() == 0:
            return None
        pairs = torch.unique(root_rows[i] * n_roots + root_cols[j])
        return pairs // n_roots, pairs % n_roots

    def union_tile(self, partial, thr, row_ids, col_ids, parent):
        edges = self.root_edges(partial, thr, parent[row_ids], parent[col_ids], parent.numel())
        if edges is not None:
            self.union(parent, *edges)

    def union(self, parent, a, b):
        # Vectorised hooking: link each larger root under the smallest root it meets, compress,
        # repeat until every edge is inside one component. parent[x] <= x always holds.
        p = parent.numpy()
        a = a.numpy()
        b = b.numpy()
        while True:
            ra, rb = p[a], p[b]
            differ = ra != rb
            if not differ.any():
                break
            lo = np.minimum(ra, rb)[differ]
            hi = np.maximum(ra, rb)[differ]
            np.minimum.at(p, hi, lo)
            _compress(p)


def _compress(p: np.ndarray) -> None:
    while True:
        q = p[p]
        if np.array_equal(q, p):
            return
        p[:] = q


class _CppEpilogue:
    """The same epilogues in inform_fast._C (float32, OpenMP)."""

    def __init__(self):
        from inform_fast import _native

        self.C = _native.module()

    def counts(self, partial, thr, count_rows, count_cols):
        self.C.dbscan_tile_counts(partial.numpy(), thr.numpy(), count_rows.numpy(), None if count_cols is None else count_cols.numpy())

    def union_tile(self, partial, thr, row_ids, col_ids, parent):
        self.C.dbscan_tile_union(partial.numpy(), thr.numpy(), row_ids.numpy(), col_ids.numpy(), parent.numpy())

    def union(self, parent, a, b):
        self.C.union_edges(parent.numpy(), a.contiguous().numpy(), b.contiguous().numpy())


def _dbscan_reference(x: torch.Tensor, eps: float, min_samples: int, block: int):
    return _dbscan_tiled(x, eps, min_samples, block, _TorchEpilogue())


def _dbscan_cpp(x: torch.Tensor, eps: float, min_samples: int, block: int):
    if x.dtype == torch.float64:  # the C++ epilogues are float32; keep float64 exact
        return _dbscan_tiled(x, eps, min_samples, block, _TorchEpilogue())
    return _dbscan_tiled(x, eps, min_samples, block, _CppEpilogue())


class _Tiles:
    """Tiles of ``||c||^2 - 2 r.c`` over one point set ``x`` [n, L], written into one reused buffer."""

    def __init__(self, x: torch.Tensor, eps: float, block: int):
        self.x = x
        self.norms = (x * x).sum(1)  # [n]
        self.thr = eps * eps - self.norms  # [n]: neighbour iff partial <= thr[row]
        self.buffer = torch.empty(block * block, dtype=x.dtype)

    def partial(self, rows, cols, diagonal: bool = False):
        (r0, r1), (c0, c1) = rows, cols
        out = self.buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.addmm(self.norms[None, c0:c1], self.x[r0:r1], self.x[c0:c1].T, alpha=-2.0, out=out)
        if diagonal:
            out.diagonal().fill_(-float("inf"))  # a point is its own neighbour, whatever the rounding
        return out


def _blocks(start: int, stop: int, block: int):
    return [(a, min(a + block, stop)) for a in range(start, stop, block)]


SAMPLE_COLUMNS = 2048


def _dbscan_tiled(x: torch.Tensor, eps: float, min_samples: int, block: int, ops):
    """Returns (core [n] bool, root [n] int64: smallest core index of the cluster, -1 for noise).

    Pass 0 counts neighbours among an evenly strided sample of SAMPLE_COLUMNS points: a point
    with min_samples of them within eps is certainly core. The points are permuted so that the
    certain ones come first; pass 1 then counts over the upper triangle of tiles and, in the
    certain x certain tiles, also unions (same GEMM, so one pass does both for dense data).
    Pass 2 connects the remaining core points (rows) to all core points; pass 3 assigns borders.
    """
    device = x.device
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.detach().to("cpu", dtype)
    x = (x - x.mean(0)).contiguous()  # centring shrinks ||x||^2 and so the GEMM cancellation
    n = x.shape[0]
    block = min(block, n)

    # 0. certainly-core points from a sample of columns (a lower bound of the true count)
    sample = torch.unique(torch.linspace(0, n - 1, min(n, SAMPLE_COLUMNS)).round().long())
    both = _Tiles(torch.cat([x, x[sample]]), eps, block)
    sample_counts = torch.zeros(n, dtype=torch.int64)
    for rows in _blocks(0, n, block):
        for cols in _blocks(n, n + sample.numel(), block):
            ops.counts(both.partial(rows, cols), both.thr[rows[0] : rows[1]], sample_counts[rows[0] : rows[1]], None)
    del both
    certain = sample_counts >= min_samples
    perm = torch.cat([torch.nonzero(certain).flatten(), torch.nonzero(~certain).flatten()])  # [n] global index
    n_cert = int(certain.sum())
    xp = x.index_select(0, perm).contiguous()

    # 1. counts everywhere; union among certain points in the same tiles
    tiles = _Tiles(xp, eps, block)
    counts = torch.zeros(n, dtype=torch.int64)
    parent = torch.arange(n, dtype=torch.int64)  # over permuted indices; kept fully compressed
    blocks = _blocks(0, n_cert, block) + _blocks(n_cert, n, block)
    for bi, rows in enumerate(blocks):
        for cols in blocks[bi:]:
            diagonal = rows == cols
            partial = tiles.partial(rows, cols, diagonal)
            thr = tiles.thr[rows[0] : rows[1]]
            ops.counts(partial, thr, counts[rows[0] : rows[1]], None if diagonal else counts[cols[0] : cols[1]])
            if cols[1] <= n_cert:
                _union_tile(ops, partial, thr, parent, rows, cols, n)
    core = counts >= min_samples  # permuted order

    # 2. the other core points: against all core points (rows: uncertain core; columns: all core)
    late = torch.nonzero(core[n_cert:]).flatten() + n_cert
    if late.numel():
        z_index = torch.cat([late, torch.arange(n_cert)])  # permuted indices of z's rows
        z = _Tiles(xp.index_select(0, z_index).contiguous(), eps, block)
        n_late = late.numel()
        late_blocks = _blocks(0, n_late, block)
        for bi, rows in enumerate(late_blocks):
            for cols in late_blocks[bi:] + _blocks(n_late, z_index.numel(), block):
                partial = z.partial(rows, cols, rows == cols)
                _union_tile(ops, partial, z.thr[rows[0] : rows[1]], parent, rows, cols, n, z_index)

    root_p = torch.where(core, parent, torch.full_like(parent, -1))  # component id (permuted) or -1
    core_p = torch.nonzero(core).flatten()
    if core_p.numel() == 0:
        return torch.zeros(n, dtype=torch.bool, device=device), torch.full((n,), -1, dtype=torch.int64, device=device)

    # 3. border points: the first core neighbour found (core points in permuted order)
    border_p = torch.nonzero(~core).flatten()
    if border_p.numel():
        _assign_borders(xp, xp.index_select(0, core_p), core_p, border_p, root_p, eps, block)

    # component ids -> the smallest global index of the component's core points
    smallest = torch.full((n,), n, dtype=torch.int64)
    smallest.scatter_reduce_(0, root_p[core_p], perm[core_p], reduce="amin")
    assigned = root_p >= 0
    root = torch.full((n,), -1, dtype=torch.int64)
    root[perm[assigned]] = smallest[root_p[assigned]]
    out_core = torch.zeros(n, dtype=torch.bool)
    out_core[perm] = core
    return out_core.to(device), root.to(device)


def _union_tile(ops, partial, thr, parent, rows, cols, n, index=None):
    """Union the eps-neighbour pairs of one tile; ``index`` maps tile rows/cols to parent indices."""
    r = torch.arange(*rows) if index is None else index[rows[0] : rows[1]]
    c = torch.arange(*cols) if index is None else index[cols[0] : cols[1]]
    ops.union_tile(partial, thr, r.contiguous(), c.contiguous(), parent)  # parent stays fully compressed


def _assign_borders(x, xc, core_index, border_index, root, eps, block):
    xb = x.index_select(0, border_index)
    bn = (xb * xb).sum(1)
    cn = (xc * xc).sum(1)
    for r0 in range(0, xb.shape[0], block):
        rows = xb[r0 : r0 + block]
        thr = (eps * eps - bn[r0 : r0 + block])[:, None]
        first = torch.full((rows.shape[0],), -1, dtype=torch.int64)
        for c0 in range(0, xc.shape[0], block):
            pending = first < 0
            if not bool(pending.any()):
                break
            hit = torch.addmm(cn[None, c0 : c0 + block], rows, xc[c0 : c0 + block].T, alpha=-2.0) <= thr
            has = hit.any(1) & pending
            first = torch.where(has, hit.to(torch.uint8).argmax(1) + c0, first)  # argmax: first True
        found = first >= 0
        targets = border_index[r0 : r0 + block][found]
        root[targets] = root[core_index[first[found]]]
