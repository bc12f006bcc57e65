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
every tile is a BLAS GEMM giving ``partial = ||c||^2 - 2 r.c`` [block, block], compared against
``eps^2 - ||r||^2`` (steps in ``_core_and_roots``):

0. counts against a strided sample of 2048 points are lower bounds, so points reaching
   min_samples there are certainly core; they are unioned with a few hundred certain sample
   points, which gives seed components;
1. among certain points only pairs of *different* seed components can add edges, and only if
   their bounding balls come within eps: the others are skipped without a GEMM, so for
   well-clustered data this step costs almost nothing; the rest are unioned tile by tile (each
   tile only touches rows that have a neighbour in another component);
2. the uncertain points are counted exactly against all points; the ones that turn out core
   are unioned with all core points;
3. non-core points against core points, for border assignment.

The result is exact whatever the sample: the sample only decides how much work is skipped.
Worst case (no certain points) the cost is that of plain tiled counting plus union over core
points, O(n^2 L) time and O(block^2 + n L) memory.

The ``cpp`` backend runs the tile epilogues (threshold + counts, threshold + live union-find) in
``inform_fast._C`` with OpenMP; the ``reference`` backend does them with PyTorch / NumPy. The
``triton`` backend (CUDA) runs the same steps on the GPU, each pair pass one fused Triton kernel
(distance, threshold and count / union-find hooking / first core neighbour in the epilogue, no
tile stored; ``inform_fast.kernels.dbscan``), so well-clustered data cost a few passes over
n x SAMPLE_COLUMNS pairs instead of several over n x n.

float64 input is computed in float64 (reference epilogues); everything else in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.validation import check_positive_int, check_real

# backends: inform_fast.dispatch.BACKENDS

DEFAULT_BLOCK = 4096


@dataclass
class DBSCANResult:
    """labels: [n] int64, cluster id or -1 (noise); core_mask: [n] bool; n_clusters: int."""

    labels: torch.Tensor
    core_mask: torch.Tensor
    n_clusters: int


def check_eps(eps) -> float:
    return check_real("eps", eps, minimum=0, open_minimum=True)


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
    return _dbscan_on_cpu(x, eps, min_samples, block, _TorchEpilogue())


def _dbscan_cpp(x: torch.Tensor, eps: float, min_samples: int, block: int):
    if x.dtype == torch.float64:  # the C++ epilogues are float32; keep float64 exact
        return _dbscan_on_cpu(x, eps, min_samples, block, _TorchEpilogue())
    return _dbscan_on_cpu(x, eps, min_samples, block, _CppEpilogue())


def _dbscan_triton(x: torch.Tensor, eps: float, min_samples: int, block: int):
    """The same algorithm on x's device, every pair pass a fused Triton kernel (no tile stored)."""
    from inform_fast.kernels.dbscan import TritonPairs

    x = x.detach().float()
    x = (x - x.mean(0)).contiguous()
    return _core_and_roots(TritonPairs(x, eps), eps, min_samples)


def _dbscan_on_cpu(x: torch.Tensor, eps: float, min_samples: int, block: int, epilogue):
    device = x.device
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.detach().to("cpu", dtype)
    x = (x - x.mean(0)).contiguous()  # centring shrinks ||x||^2 and so the GEMM cancellation
    core, root = _core_and_roots(_GemmTiles(x, eps, min(block, x.shape[0]), epilogue), eps, min_samples)
    return core.to(device), root.to(device)


def _blocks(start: int, stop: int, block: int):
    return [(a, min(a + block, stop)) for a in range(start, stop, block)]


SAMPLE_COLUMNS = 2048
SEED_COLUMNS = 512
MAX_COMPONENTS = 128  # above this many seed components, pairwise ball pruning is not worth it


class _GemmTiles:
    """The pair passes of the CPU backends: one reused [block, block] buffer filled by a BLAS
    GEMM with ``partial = ||c||^2 - 2 r.c``, then a threshold epilogue (PyTorch or C++).

    Every pair engine (this one, ``inform_fast.kernels.dbscan.TritonPairs``) offers, on the
    centred points ``x`` [n, L]:

    * ``count(rows, cols, counts)``: counts[k] += eps-neighbours of rows[k] among cols, the point
      itself excluded;
    * ``union(rows, cols, parent, symmetric)``: merge the union-find ``parent`` (fully
      compressed, parent[i] <= i) along every eps-edge between rows and cols;
    * ``assign_borders(core_index, border_index, root)``: root[b] = root of b's first (smallest
      index) core neighbour, for every border point that has one.
    """

    def __init__(self, x: torch.Tensor, eps: float, block: int, epilogue):
        self.x = x
        self.eps = eps
        self.ops = epilogue
        self.norms = (x * x).sum(1)  # [n]
        self.eps2 = eps * eps
        self.block = block
        self.buffer = torch.empty(block * block, dtype=x.dtype)

    def tiles(self, rows: torch.Tensor, cols: torch.Tensor, symmetric: bool = False):
        """Yield (row slice, col slice, partial, thr) over rows x cols (index tensors into x):
        partial = ||c||^2 - 2 r.c [br, bc], neighbours iff partial <= thr[:, None]. With
        ``symmetric`` (rows is cols) only the upper triangle of tiles is visited."""
        xr, xc = self.x.index_select(0, rows), self.x.index_select(0, cols)
        thr = self.eps2 - self.norms.index_select(0, rows)
        cn = self.norms.index_select(0, cols)
        row_blocks = _blocks(0, rows.numel(), self.block)
        col_blocks = _blocks(0, cols.numel(), self.block)
        for bi, (r0, r1) in enumerate(row_blocks):
            for c0, c1 in col_blocks[bi:] if symmetric else col_blocks:
                out = self.buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.addmm(cn[None, c0:c1], xr[r0:r1], xc[c0:c1].T, alpha=-2.0, out=out)
                yield slice(r0, r1), slice(c0, c1), out, thr[r0:r1]

    def count(self, rows, cols, counts):
        position = torch.full((self.x.shape[0],), -1, dtype=torch.int64)
        position[cols] = torch.arange(cols.numel())
        self_col = position[rows]  # where each row appears among the columns (-1: it does not)
        for rs, cs, partial, thr in self.tiles(rows, cols):
            own = self_col[rs]
            inside = (own >= cs.start) & (own < cs.stop)
            if bool(inside.any()):
                partial[torch.nonzero(inside).flatten(), own[inside] - cs.start] = float("inf")
            self.ops.counts(partial, thr, counts[rs], None)

    def union(self, rows, cols, parent, symmetric=False):
        for rs, cs, partial, thr in self.tiles(rows, cols, symmetric):
            self.ops.union_tile(partial, thr, rows[rs].contiguous(), cols[cs].contiguous(), parent)

    def assign_borders(self, core_index, border_index, root):
        x, eps, block = self.x, self.eps, self.block
        xb, xc = x.index_select(0, border_index), x.index_select(0, core_index)
        bn, cn = (xb * xb).sum(1), (xc * xc).sum(1)
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


def _core_and_roots(pairs, eps: float, min_samples: int):
    """Returns (core [n] bool, root [n] int64: smallest core index of the cluster, -1 for noise),
    on the device of ``pairs.x`` (the centred points; ``pairs`` is a pair engine, see _GemmTiles).

    0. Counts against an evenly strided sample of SAMPLE_COLUMNS points (plus the point itself)
       are lower bounds: a point reaching min_samples there is certainly core. Certain points
       are unioned with the first SEED_COLUMNS certain sample points within eps: seed components.
    1. Certain x certain: only pairs of *different* seed components can add edges, and a pair
       whose bounding balls are more than eps apart cannot; the rest are unioned pass by pass.
       (Above MAX_COMPONENTS seed components: all certain x certain pairs, upper triangle.)
    2. The uncertain points are counted against all points; those that are core are unioned
       with all core points.
    3. Border points take the root of their first core neighbour.
    """
    x = pairs.x
    n, device = x.shape[0], x.device
    everything = torch.arange(n, device=device)
    parent = torch.arange(n, dtype=torch.int64, device=device)  # union-find, kept fully compressed

    # 0. certainly-core points and seed components
    sample = torch.unique(torch.linspace(0, n - 1, min(n, SAMPLE_COLUMNS), device=device).round().long())
    counts = torch.ones(n, dtype=torch.int64, device=device)  # the point itself
    pairs.count(everything, sample, counts)
    certain = counts >= min_samples
    certain_index = torch.nonzero(certain).flatten()
    # a few hundred seeds suffice to join a dense cluster; the union below is exact whatever
    # the seeds, they only decide how much of step 1 the ball pruning can skip
    certain_sample = sample[certain[sample]][:SEED_COLUMNS]
    if certain_index.numel() and certain_sample.numel():
        pairs.union(certain_index, certain_sample, parent)

    # 1. certain x certain, pruned by component balls
    if certain_index.numel():
        _union_certain(pairs, certain_index, parent, eps)

    # 2. uncertain points: exact counts, then the core ones against all core points
    uncertain = torch.nonzero(~certain).flatten()
    core = certain.clone()
    if uncertain.numel():
        late_counts = torch.ones(uncertain.numel(), dtype=torch.int64, device=device)
        pairs.count(uncertain, everything, late_counts)
        late = uncertain[late_counts >= min_samples]
        core[late] = True
        if late.numel():
            pairs.union(late, late, parent, symmetric=True)
            if certain_index.numel():
                pairs.union(late, certain_index, parent)

    core_index = torch.nonzero(core).flatten()
    root = torch.full((n,), -1, dtype=torch.int64, device=device)
    if core_index.numel() == 0:
        return core, root
    root[core_index] = parent[core_index]  # smallest core index of the component

    # 3. border points: the first core neighbour found
    border_index = torch.nonzero(~core).flatten()
    if border_index.numel():
        pairs.assign_borders(core_index, border_index, root)
    return core, root


def _union_certain(pairs, certain_index, parent, eps):
    x = pairs.x
    comp = parent[certain_index]
    roots, member_comp = torch.unique(comp, return_inverse=True)
    k = roots.numel()
    if k == 1:
        return
    if k > MAX_COMPONENTS:
        pairs.union(certain_index, certain_index, parent, symmetric=True)
        return
    f64 = dict(dtype=torch.float64, device=x.device)
    sizes = torch.bincount(member_comp, minlength=k).to(torch.float64)
    chunks = _blocks(0, certain_index.numel(), 1 << 16)  # bounded temporaries
    centres = torch.zeros((k, x.shape[1]), **f64)
    for a, b in chunks:
        one_hot = torch.zeros((k, b - a), **f64)
        one_hot[member_comp[a:b], torch.arange(b - a, device=x.device)] = 1.0
        centres += one_hot @ x.index_select(0, certain_index[a:b]).to(torch.float64)  # GEMM, faster than index_add_
    centres /= sizes[:, None]
    radius = torch.zeros(k, **f64)
    scale = torch.zeros((), **f64)
    for a, b in chunks:
        points = x.index_select(0, certain_index[a:b]).to(torch.float64)
        spread = (points - centres[member_comp[a:b]]).norm(dim=1)
        radius.scatter_reduce_(0, member_comp[a:b], spread, reduce="amax")
        scale = torch.maximum(scale, points.abs().max())
    gap = torch.cdist(centres, centres) - radius[:, None] - radius[None, :]
    # conservative: prune only pairs clearly farther apart than eps (rounding of the tiles)
    reachable = (gap <= eps * (1 + 1e-4) + 1e-5 * scale).cpu()
    members = [certain_index[member_comp == a] for a in range(k)]
    for a in range(k):
        for b in range(a + 1, k):
            if bool(reachable[a, b]) and int(parent[roots[a]]) != int(parent[roots[b]]):
                pairs.union(members[a], members[b], parent)
