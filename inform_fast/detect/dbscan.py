"""DBSCAN over latent matrices, exact and tiled: never an n x n matrix.

Same definition as scikit-learn's ``DBSCAN(eps, min_samples)`` with the Euclidean metric:

* a point is *core* when at least ``min_samples`` points (itself included) lie within ``eps``
  (``dist <= eps``, the distance as the float64 sum of squared differences: scikit-learn's test);
* core points within ``eps`` of each other are in the same cluster (connected components);
* a non-core point within ``eps`` of a core point is a *border* point and joins the cluster of
  its core neighbour with the smallest index (deterministic; scikit-learn's choice depends on its
  expansion order, the core partition is the same);
* everything else is noise, label ``-1``.

Clusters are numbered 0, 1, ... in the order of their smallest core point index. The result is
exact for any finite input: pairs are classified by float32 GEMM tiles in a centred, scaled
frame with an error band, and the pairs inside the band are decided by the exact test
(``inform_fast.spatial``).

Repeated rows first (``repeated_rows``): copies of an identical row beyond its ``min_samples``-th
change nothing (``m >= min_samples`` copies are core and in one cluster, and min_samples of them
bring a neighbour's count as far as all m), so they are set aside before the passes and take
their first copy's result after; a collapsed policy's repeated responses no longer fill every
neighbour list with copies.

Algorithm (one driver, ``_core_and_roots``, over a *pair engine*; every pass runs on a set of row
points against gathered column points, centred on the rows):

0. a k-d tree over the top principal coordinates puts the points in leaves of ``LEAF_SIZE`` and lists,
   per leaf, the leaves that can hold a neighbour (lower bounds of ``spatial``, found by a descent
   over runs of consecutive leaves, not by testing all pairs of leaves);
1. *near pass*: each group of ``ROW_GROUP`` rows (whole consecutive leaves) against its nearest
   candidate leaves (about ``NEAR_COLUMNS`` points):
   neighbour counts and capped neighbour lists. A point that reaches ``min_samples`` here is
   certainly core; where the near leaves are all the candidates, the counts are final;
2. *far pass*: the points still below ``min_samples`` are counted again against every candidate
   leaf of their leaf (``FAR_GROUP`` rows at a time where the leaf bounds prune, ``ROW_GROUP``
   where they leave most pairs): exact counts and complete neighbour lists
   (noise and border points have fewer than ``min_samples`` neighbours, so their lists are
   complete by construction);
3. *union*: along the listed edges between core points, then the near pass again restricted to
   core points with a union-find epilogue (links each leaf's cores to its neighbours' cores);
   the only edges still unknown join two core points whose lists overflowed, so the components
   they form are compared pairwise, pruned by their bounding balls, and joined where a pair
   within eps exists (rows of the smaller side, columns of its partners, stopping once joined);
4. *borders*: each non-core point with a core neighbour (in its complete list) takes its cluster.

Cost: the near pass is ``n x NEAR_COLUMNS`` pairs; the far pass ``(points not certain after it)
x (candidate columns)``, which is small where the data are dense around most points or where
the tree prunes (latents whose variance lives in few directions), and ``n^2`` only for data that
are both diffuse and high-dimensional at the scale of eps; the union passes are near-linear
unless many separate components touch. Memory (cpp backend): the index (the top principal
coordinates, n x 8 float32 below 65,536 points and n x 16 above, and per-leaf bounds; the points
are read in place), the lists (``n x cap`` int32, cap = 8 for min_samples <= 9) and, per worker,
mapped scratch for one tile's packed columns (a lower-bound tile's ``block x 8`` or ``x 16``
floats, a full tile's 256 x D); the reference backend also keeps a float32 frame copy of the
points and a ``ROW_BLOCK x block`` tile.

Backends (``inform_fast.dispatch``, op ``"dbscan"``): ``reference`` (GEMM tiles and PyTorch
epilogues), ``cpp`` (every tile in the panel kernel of ``inform_fast._C``: computed in registers
from columns packed straight from the points, never stored), ``triton`` (the engine's passes as
fused Triton kernels, ``inform_fast.kernels.dbscan``; the exact test of the band's pairs on the host).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import threading

import numpy as np
import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.ops.registry import define_op
from inform_fast.spatial import (
    FILTER_DIMS,
    FLOAT32_ROUNDOFF,
    LeafIndex,
    box_gap,
    build_index,
    candidate_leaves,
    chunk_rows,
    cross_products,
    distance_floor,
    dot_band_coefficient,
    mapped_empty,
    outward,
    run_parallel,
    tile_band,
    union_roots,
    worker_slot,
    worker_threads,
)
from inform_fast.validation import check_positive_int, check_real

# backends: inform_fast.dispatch.BACKENDS

DEFAULT_BLOCK = 4096  # columns per tile
FULL_PANEL_COLUMNS = 256  # a full tile's columns packed this many at a time (128 KB at D = 128, in L2)
LEAF_SIZE = 64  # points per k-d leaf
ROW_BLOCK = 512  # rows per tile
ROW_GROUP = 1024  # rows the near and far passes take together (whole leaves; 256 spent more on per-group overhead than it saved in pairs, on every distribution at 32k and 10^5)
FAR_GROUP = 256  # far rows per group where the leaf bounds prune (below DENSE_CANDIDATES); else ROW_GROUP
DENSE_CANDIDATES = 0.5  # share of n^2 pairs left by the leaf bounds above which a group's candidates are ~all
NEAR_COLUMNS = 1024  # columns of the near pass (the nearest candidate leaves)
LIST_CAP = 8  # neighbour list length (at least min_samples - 1); 16 cost 1 MB more at 32,000 points for no measurable time
# principal coordinates per point for the lower-bound tiles: 16 (spatial.FILTER_DIMS) from
# FEW_DIMS_BELOW points on, 8 below: at 32,000 points 8 took the same time and 1 MB less (the
# resident arrays are most of DBSCAN's memory there); at 10^5-10^6, where eps shrinks and the
# finer directions decide more pairs, 16 were 2-17% faster (InfoRM latents at 3x10^5: 6.65 s
# against 7.98 s; at 10^6, 41.5 s against 47.2 s with 5x the full-tile pairs)
FEW_DIMS = 8
FEW_DIMS_BELOW = 1 << 16
LIST_BUDGET = 1 << 28  # bound on n x cap list entries (1 GiB of int32)


@dataclass
class DBSCANResult:
    """labels: [n] int64, cluster id or -1 (noise); core_mask: [n] bool; n_clusters: int.
    stats: what the run did (pairs computed, exact tests, leaves), for benchmarks."""

    labels: torch.Tensor
    core_mask: torch.Tensor
    n_clusters: int
    stats: dict = field(default_factory=dict, repr=False)


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

    ``block`` is the column count of a tile: the cpp backend's scratch per worker thread is a
    lower-bound tile's ``block x 16`` floats at most and a full tile's 256 x D (packed 256 columns
    at a time), beyond the index and the neighbour lists; the reference backend's GEMM tiles are
    ``ROW_BLOCK x block`` floats, beside a float32 frame copy of x. Returns a DBSCANResult on
    ``x``'s device.
    """
    x = as_latents("x", x)
    eps = check_eps(eps)
    check_positive_int("min_samples", min_samples)
    check_positive_int("block", block)
    return dbscan_checked(x, eps, min_samples, block, backend)


# The run statistics of the last op call on this thread (an op returns tensors only; eager callers
# read them right after the call, the monitor's threads each their own).
_LAST_STATS = threading.local()


def _dbscan_op(x: torch.Tensor, eps: float, min_samples: int, block: int, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(core [n] bool, root [n] int64: the smallest core index of the point's cluster, -1 for noise)
    of validated ``x`` [n, L], through the backend ``inform_fast.dispatch`` picks (op "dbscan")."""
    _, impl = dispatch.resolve("dbscan", x.device, backend)
    repeats = repeated_rows(x, min_samples)
    if repeats is None:
        core, root, stats = impl(x, eps, min_samples, block)
    else:
        kept, first = repeats
        core_kept, root_kept, stats = impl(x.index_select(0, kept), eps, min_samples, block)
        core, root = _expand_repeats(x.shape[0], kept, first, core_kept, root_kept)
        stats = {**stats, "n": x.shape[0], "repeated_rows_set_aside": x.shape[0] - kept.numel()}
    _LAST_STATS.value = stats
    return core, root


HASH_COLUMNS = 8  # coordinates whose bits the duplicate search sorts by (then whole rows compared)


def repeated_rows(x: torch.Tensor, min_samples: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Rows beyond the ``min_samples``-th copy of an identical row, which change no DBSCAN result:
    ``m >= min_samples`` identical points are core, in one cluster, and a neighbour's count
    reaches min_samples with ``min_samples`` of them as with all m; the first copies (the smallest
    indices, which the cluster numbering and the border rule read) stay. Returns None when no row
    has more than min_samples copies, else (kept [k] int64 row indices, ascending; first [n]
    int64: for every row, the index of the first row identical to it, itself where kept).
    Why: a collapsed policy repeats responses, and 80 copies of each of 200 latents (half of
    32,000 rows) filled every neighbour list with copies and left DBSCAN 3x slower than on the
    same number of distinct points."""
    n = x.shape[0]
    if n <= min_samples:
        return None
    # candidates: equal bits in a few spread coordinates (+ 0.0 makes -0.0 and 0.0 one value)
    columns = torch.linspace(0, x.shape[1] - 1, min(HASH_COLUMNS, x.shape[1])).round().long().unique().to(x.device)
    sample = x.index_select(1, columns) + 0.0
    bits = sample.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[sample.element_size()]).to(torch.int64)
    key = bits[:, 0]
    for c in range(1, bits.shape[1]):  # a 64-bit mix of the columns (wrapping arithmetic)
        key = key * 1_000_003 + bits[:, c]
    order = torch.argsort(key, stable=True)  # equal keys in index order
    key = key[order]
    start = torch.ones(n, dtype=torch.bool, device=x.device)
    start[1:] = key[1:] != key[:-1]
    run = torch.cumsum(start, 0) - 1
    run_first = torch.nonzero(start).flatten()
    rank = torch.arange(n, device=x.device) - run_first[run]  # position within the run of equal keys
    if int(rank.max()) < min_samples:
        return None
    # a row is set aside only if it equals its run's first row exactly (a key collision keeps it)
    tail = torch.nonzero(rank >= min_samples).flatten()
    head = order[run_first[run[tail]]]
    same = (x[order[tail]] == x[head]).all(1)
    drop_rows, drop_first = order[tail[same]], head[same]
    if drop_rows.numel() == 0:
        return None
    first = torch.arange(n, device=x.device)
    first[drop_rows] = drop_first
    keep = torch.ones(n, dtype=torch.bool, device=x.device)
    keep[drop_rows] = False
    return torch.nonzero(keep).flatten(), first


def _expand_repeats(n: int, kept: torch.Tensor, first: torch.Tensor, core_kept: torch.Tensor, root_kept: torch.Tensor):
    """(core [n], root [n]) of all rows from the result on the kept rows (their indices ``kept``):
    roots map back through ``kept``; a row set aside is core (it has min_samples copies) in its
    first copy's cluster."""
    core = torch.ones(n, dtype=torch.bool, device=core_kept.device)
    root = torch.full((n,), -1, dtype=torch.int64, device=core_kept.device)
    core[kept] = core_kept
    root[kept] = torch.where(root_kept >= 0, kept[root_kept.clamp(min=0)], root_kept)
    return core, root[first]


def _dbscan_fake(x, eps, min_samples, block, backend):
    return x.new_empty(x.shape[0], dtype=torch.bool), x.new_empty(x.shape[0], dtype=torch.int64)


define_op("dbscan", "(Tensor x, float eps, int min_samples, int block, str? backend) -> (Tensor, Tensor)", _dbscan_op, _dbscan_fake)


def dbscan_checked(x: torch.Tensor, eps: float, min_samples: int, block: int = DEFAULT_BLOCK, backend: Optional[str] = None) -> DBSCANResult:
    """``dbscan`` on arguments already validated by the caller (no second pass over ``x``), through
    the registered op ``torch.ops.inform_fast.dbscan`` (so ``torch.compile`` sees one op)."""
    _LAST_STATS.value = {}
    core, root = torch.ops.inform_fast.dbscan(x.detach(), float(eps), int(min_samples), int(block), backend)
    return _number_clusters(core, root, _LAST_STATS.value)


def _number_clusters(core: torch.Tensor, root: torch.Tensor, stats: dict) -> DBSCANResult:
    """core [n] bool; root [n] int64: index of the smallest core point of the component (-1 noise)."""
    roots = torch.unique(root[core])  # sorted: cluster k has the k-th smallest first core index
    labels = torch.full_like(root, -1)
    assigned = root >= 0
    labels[assigned] = torch.searchsorted(roots, root[assigned])
    return DBSCANResult(labels=labels, core_mask=core, n_clusters=int(roots.numel()), stats=stats)


def exact_points(x: torch.Tensor) -> torch.Tensor:
    """The values the exact test reads: x on the CPU, contiguous, float32 or float64 (float16 and
    bfloat16 widen to float32 exactly)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.detach().to("cpu", dtype).contiguous()


# --- epilogues --------------------------------------------------------------------------------


class _TorchEpilogue:
    """The tile epilogues in PyTorch / NumPy (the reference)."""

    def __init__(self, points: torch.Tensor, scale: float, eps2: float):
        self.points, self.scale, self.eps2 = points, scale, eps2

    def exact_hits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[P] bool: exact test of the pairs (a[p], b[p]) (original ids)."""
        diff = self.points[a].to(torch.float64) * self.scale - self.points[b].to(torch.float64) * self.scale
        return (diff * diff).sum(1) <= self.eps2

    def hits(self, partial, lo, hi, row_ids, col_ids):
        hit = partial <= lo[:, None]
        maybe = (partial <= hi[:, None]) & ~hit
        if bool(maybe.any()):
            i, j = torch.nonzero(maybe, as_tuple=True)
            keep = self.exact_hits(row_ids[i], col_ids[j])
            hit[i[keep], j[keep]] = True
            return hit, int(i.numel())
        return hit, 0

    def count_at_most(self, partial, hi, budget: int) -> int:
        return int((partial <= hi[:, None]).sum())

    def neighbours(self, partial, lo, hi, row_ids, col_ids, counts, lists) -> int:
        hit, tests = self.hits(partial, lo, hi, row_ids, col_ids)
        hit &= row_ids[:, None] != col_ids[None, :]
        cap = lists.shape[1]
        open_rows = torch.nonzero(counts[row_ids] < cap).flatten()
        if open_rows.numel():
            i, j = torch.nonzero(hit[open_rows], as_tuple=True)  # row-major: columns in order per row
            if i.numel():
                first = torch.searchsorted(i, i, right=False)
                slot = counts[row_ids[open_rows[i]]].to(torch.int64) + torch.arange(i.numel()) - first
                keep = slot < cap
                lists[row_ids[open_rows[i[keep]]], slot[keep]] = col_ids[j[keep]].to(torch.int32)
        counts[row_ids] += hit.sum(1).to(torch.int32)
        return tests

    def union(self, partial, lo, hi, row_ids, col_ids, parent) -> int:
        hit, tests = self.hits(partial, lo, hi, row_ids, col_ids)
        root_rows, root_cols = parent[row_ids], parent[col_ids]
        hit &= root_rows[:, None] != root_cols[None, :]
        i, j = torch.nonzero(hit, as_tuple=True)
        if i.numel():
            n = parent.numel()
            pairs = torch.unique(root_rows[i] * n + root_cols[j])
            union_roots(parent, pairs // n, pairs % n)
        return tests


_NO_BUDGET = 2**63 - 1  # the C++ panel kernel's "no budget" (its L2-blocked order)


class _CppEpilogue(_TorchEpilogue):
    """The C++ epilogue: every tile of a float32 frame in the panel kernel of inform_fast._C
    (``panel``: the tile computed in registers from packed columns, never stored); a float64 frame
    (eps below float32's resolution of the data) keeps the reference's GEMM tiles and epilogues."""

    def __init__(self, points: torch.Tensor, scale: float, eps2: float):
        from inform_fast import _native

        super().__init__(points, scale, eps2)
        self.C = _native.module()
        self.points_np = points.numpy()

    def bound_tile(self, kind: str, rows, panels, norm, hi, row_ids, col_ids, budget: Optional[float], *args) -> tuple[int, int]:
        """``neighbours`` / ``union`` of a lower-bound tile computed by the C++ panel kernel from packed
        columns (``CpuTiles._panel_bound``; float64 upper thresholds ``hi``, every pair at most them
        tested): (rows done, exact tests); with a ``budget``, rows past the first that needed more
        tests than it are left."""
        limit = _NO_BUDGET if budget is None else int(min(budget, 2**62))
        common = (rows.numpy(), panels.numpy(), norm.numpy(), None, hi.numpy(), row_ids.numpy(), col_ids.numpy(),
                  self.points_np, self.scale, self.eps2)
        if kind == "neighbours":
            counts, lists = args
            done = self.C.dbscan_panel_neighbours(*common, counts.numpy(), lists.numpy(), limit)
        else:
            (parent,) = args
            done = self.C.dbscan_panel_union(*common, parent.numpy(), limit)
        return (row_ids.numel(), done) if done >= 0 else (-done, limit)

    def full_tile(self, kind: str, operands: dict, *args) -> int:
        """``neighbours`` / ``union`` of a full tile in C++ (``CpuTiles._panel_full``: ``operands`` are
        ``_C.dbscan_full_tile``'s tile arguments): the exact tests."""
        if kind == "neighbours":
            counts, lists = args
            state = dict(counts=counts.numpy(), lists=lists.numpy())
        else:
            (parent,) = args
            state = dict(parent=parent.numpy())
        return self.C.dbscan_full_tile(**operands, points=self.points_np, points_scale=self.scale, eps2=self.eps2, **state)


# --- the CPU pair engine ----------------------------------------------------------------------

FILTER_MAX_FRACTION = 1 / 32  # above this share of candidate pairs, a full tile is cheaper than exact tests
FILTER_RETRY = 4  # after this many dense lower-bound tries in a row, only every 4th row block tries


class _RowBlock:
    """A block of row points in a tile's frame: principal coordinates (``low()``) and full
    coordinates (``full()``), each built on first use and centred on the rows' mean where that
    shrinks the norms (what the GEMM's cancellation is relative to; on diffuse data it does not,
    and the global frame saves a pass over each column chunk), with float64 norms in that frame,
    thresholds before the band, global norms and ids. A block that full tiles settle never builds
    its principal coordinates, and one that lower-bound tiles settle never its full ones (on the
    1/k spectrum at 32,000 points, the eager build of both was a tenth of the passes' CPU time)."""

    def __init__(self, engine: "CpuTiles", positions: torch.Tensor, _parts: Optional[dict] = None):
        index = engine.index
        self.engine = engine
        self.positions = positions
        self.ids = index.order[positions]
        self.global_norm = index.norms[positions]
        self._parts = {} if _parts is None else _parts

    def subset(self, keep: torch.Tensor) -> "_RowBlock":
        """The rows ``keep`` (bool mask or positions into this block) of this block, in the frames
        already built (a frame centred on the whole block's mean holds its rows as well: only the
        norms it shrinks by centring are then a little larger)."""
        parts = {name: (rows[keep], centre, norm[keep], threshold[keep])
                 for name, (rows, centre, norm, threshold) in self._parts.items()}
        return _RowBlock(self.engine, self.positions[keep], parts)

    def low(self):
        """(principal coordinates, centre or None, float64 norms, thresholds before the band)."""
        engine = self.engine
        return self._part("low", lambda: engine.index.top.index_select(0, self.positions),
                          lambda: engine.top_sqnorm[self.positions].to(torch.float64).sqrt(), engine.low_eps2)

    def full(self):
        """(full coordinates, centre or None, float64 norms, thresholds before the band)."""
        engine = self.engine
        return self._part("full", lambda: engine.index.gather(self.positions), lambda: self.global_norm, engine.eps2)

    def _part(self, name: str, coordinates, global_norm, eps2: float):
        """The rows (``coordinates()``: their global-frame coordinates) in their frame (built once):
        ``global_norm()`` gives their norms in the global frame, ``eps2`` the squared radius the
        thresholds start from."""
        if name not in self._parts:
            rows, centre, norm = self._frame(coordinates(), global_norm(), self.engine.eps_frame)
            self._parts[name] = (rows, centre, norm, eps2 - norm * norm)
        return self._parts[name]

    @staticmethod
    def _frame(rows: torch.Tensor, global_norm: torch.Tensor, reach: float):
        """(rows, centre or None, float64 norms) in the chosen frame."""
        centre = rows.mean(0)
        local = rows - centre
        # norms in the rows' precision: their error (gamma_D relative) is inside the band's c1 term
        local_norm = (local * local).sum(1).to(torch.float64).sqrt()
        if float(local_norm.max()) + reach < 0.5 * float(global_norm.max()):
            return local, centre, local_norm
        return rows, None, global_norm


class CpuTiles:
    """The pair engine of the CPU backends: GEMM tiles of row points against gathered column
    points, both centred on the rows' mean, thresholds widened by the error band, and an
    epilogue (PyTorch or C++) that decides the band's pairs exactly.

    A tile is *full* (all D coordinates: pairs below the band are neighbours, pairs inside it
    are tested exactly) or *filtering* (the top principal coordinates only: their distance is a
    lower bound of the full one, so a pair above eps there is no neighbour, and the few pairs
    left are tested exactly). ``mode="auto"`` tries the filter on the first column chunk of each
    row block and keeps it while it leaves at most FILTER_MAX_FRACTION of the pairs.

    Every pair engine (this one, ``inform_fast.kernels.dbscan.TritonTiles``) offers, for
    positions ``rows`` and ``cols`` of the index (counts, lists and parent are indexed
    by original row):

    * ``neighbours(rows, cols, counts, lists, mode, need=None)``: counts[i] += neighbours of i
      among cols (itself excluded), appended to i's list while it has room (rows distinct);
      with ``need``, a row is no longer scanned once its count reaches it;
    * ``union(rows, cols, parent, mode, stop=None)``: merge the union-find ``parent`` (fully
      compressed, parent[i] <= i) along every neighbour pair, checking ``stop()`` between row
      blocks.
    """

    def __init__(self, index: LeafIndex, eps: float, epilogue, block: int, workers: int = 1):
        self.index = index
        self.native = isinstance(epilogue, _CppEpilogue)  # the C++ extension serves the index passes too
        eps_frame = eps * index.frame.scale
        self.eps_frame = eps_frame
        self.eps2 = eps_frame**2
        # squared norms of the principal coordinates in chunks (one n x p product at once was 1 MB at 32,000 points)
        self.top_sqnorm = torch.cat([(part * part).sum(1) for part in index.top.split(chunk_rows(index.device))])
        self.filter_failures = 0  # lower-bound tiles found dense in a row (auto mode then rests)
        self.row_blocks = 0
        # the principal-coordinate distance bounds the distance of the *stored* points, which may
        # exceed the true one by the index's slack
        self.low_eps2 = (eps_frame + index.slack) ** 2
        self.ops = epilogue
        self.workers = workers
        self.pairs = 0  # pairs in full tiles
        self.filtered_pairs = 0  # pairs in lower-bound tiles
        self.exact_tests = 0
        self._lock = threading.Lock()
        self._buffers = {}  # (worker slot, name): one scratch buffer per worker (spatial.worker_slot)
        # every tile in the C++ panel kernel (float32 frames; columns packed from the indexed array)
        self.panel = (hasattr(epilogue, "bound_tile") and index.frame.dtype == torch.float32
                      and index.source.dtype in (torch.float32, torch.float64) and index.source.device.type == "cpu")
        if self.panel:
            self.source = index.source.contiguous().numpy()
            self.frame_mean = index.frame.mean.to(index.source.dtype).numpy()
            self.top = index.top.contiguous().numpy()
        self.block = block

    def _count(self, pairs: int = 0, filtered: int = 0, tests: int = 0) -> None:
        with self._lock:
            self.pairs += pairs
            self.filtered_pairs += filtered
            self.exact_tests += tests

    def release_scratch(self) -> None:
        """Drop the scratch buffers of every pool slot but 0's, which the caller's thread uses (the
        union and join passes run there alone): their pages go back to the system."""
        for key in [key for key in self._buffers if key[0] != 0]:
            del self._buffers[key]

    def _buffer(self, size: int, name: str = "tile", capacity: int = 0) -> torch.Tensor:
        """This worker's buffer ``name`` as a flat view of ``size`` elements, mapped pages of its own
        (``mapped_empty``) of at least ``capacity`` elements (the most a tile can ask, so it is
        never reallocated: a page costs memory only once used): tiles and packed columns reuse one
        buffer each instead of a fresh one per tile, and they go with the engine instead of
        staying in a worker thread's malloc arena (at 32,000 points the process grew by about
        twice its live heap). One per pool slot: the passes' caller shares slot 0's."""
        key = (worker_slot(), name)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[key] = mapped_empty(max(size, capacity), self.index.dtype)
        return buffer[:size]

    def _operands(self, rb: _RowBlock, col_pos: torch.Tensor, low: bool):
        """(rows [R, d], columns [C, d] in the rows' frame, the columns' squared norms, the rows'
        thresholds before the band [R], the band [R]) of the row block against ``col_pos``: all
        D coordinates, or the principal ones (``low``)."""
        index = self.index
        if low:
            r, centre, row_norm, threshold = rb.low()
            c, sqnorm, dim = index.top.index_select(0, col_pos), self.top_sqnorm, index.top.shape[1]
        else:
            r, centre, row_norm, threshold = rb.full()
            dim = index.dim
            c = index.gather(col_pos, out=self._buffer(col_pos.numel() * dim, "columns").view(-1, dim))
            sqnorm = index.sqnorm
        if centre is not None:
            c -= centre
            col_norm2 = (c * c).sum(1)
        else:
            col_norm2 = sqnorm[col_pos]
        band = tile_band(index.frame, dim, row_norm, float(col_norm2.max()) ** 0.5 * (1 + 1e-6), rb.global_norm,
                         float(index.norms[col_pos].max()))
        return r, c, col_norm2, threshold, band

    def _tile(self, rb: _RowBlock, col_pos: torch.Tensor, low: bool):
        """(partial [R, C], thr_lo [R], thr_hi [R]) of the row block against ``col_pos``."""
        r, c, col_norm2, threshold, band = self._operands(rb, col_pos, low)
        if not low:
            self._count(pairs=r.shape[0] * c.shape[0])
        lo, hi = outward(threshold - band, threshold + band, r.dtype)
        if low:  # a lower bound only rules pairs out
            lo = torch.full_like(lo, float("-inf"))
        tile = self._buffer(r.shape[0] * c.shape[0]).view(r.shape[0], c.shape[0])
        torch.addmm(col_norm2[None, :], r, c.T, alpha=-2.0, out=tile)  # ||c||^2 - 2 r.c
        return tile, lo, hi

    def _panel_bound(self, kind: str, rb: _RowBlock, col_pos: torch.Tensor, col_ids: torch.Tensor, budget: Optional[float],
                     *args) -> tuple[int, int]:
        """The lower-bound tile of ``_tile(rb, col_pos, True)`` in the C++ panel kernel: the columns'
        principal coordinates packed (less the rows' centre) into this worker's panel buffer, the
        band from their norms, then the kernel with no lower threshold (a lower bound only rules
        pairs out): (rows done, exact tests); with a ``budget``, rows past the first that needed
        more tests than it are left."""
        index = self.index
        r, centre, row_norm, threshold = rb.low()
        dim, cols = r.shape[1], col_pos.numel()
        n_panels = -(-cols // 16)
        most = -(-self.block // 16) * 16  # columns of the widest tile
        panels = self._buffer(n_panels * dim * 16, "panels", most * dim).view(n_panels, dim, 16)
        norm = self._buffer(n_panels * 16, "norms", most)
        self.ops.C.pack_panels(self.top, col_pos.numpy(), None, 1.0, None if centre is None else centre.numpy(), panels.numpy(),
                               norm.numpy())
        band = tile_band(index.frame, dim, row_norm, float(norm[:cols].max()) ** 0.5 * (1 + 1e-6), rb.global_norm,
                         float(index.norms[col_pos].max()))
        # float64 thresholds: the kernel rounds them outwards
        return self.ops.bound_tile(kind, r.contiguous(), panels, norm, threshold + band, rb.ids, col_ids, budget, *args)

    def _panel_step(self, kind: str, rb: _RowBlock, col_pos: torch.Tensor, col_ids: torch.Tensor, low: Optional[bool],
                    budget: float, *args) -> Optional[bool]:
        """``_step`` with every tile in the C++ panel kernel: the lower-bound try, then a full tile for
        the rows it left."""
        if low is not False:
            done, tests = self._panel_bound(kind, rb, col_pos, col_ids, None if low is True else budget, *args)
            self._count(filtered=done * col_pos.numel(), tests=tests)
            if done == rb.ids.numel():
                return tests <= budget
            rb = rb.subset(torch.arange(done, rb.ids.numel()))
        tests = self._panel_full(kind, rb, col_pos, col_ids, *args)
        self._count(pairs=rb.ids.numel() * col_pos.numel(), tests=tests)
        return False

    def _panel_full(self, kind: str, rb: _RowBlock, col_pos: torch.Tensor, col_ids: torch.Tensor, *args) -> int:
        """The full tile of ``_tile(rb, col_pos, False)`` in the C++ panel kernel, its columns packed
        straight from the indexed array (through the frame and the rows' centre) FULL_PANEL_COLUMNS
        at a time (``_C.dbscan_full_tile``, each chunk with its own band): a whole tile's packed
        columns were 512 KB per worker at 1,024 x 128, a sixth of DBSCAN's heap at 32,000 points,
        and chunks packed from Python cost 20-80% more time. Returns the exact tests."""
        index = self.index
        r, centre, row_norm, threshold = rb.full()
        c1, c2 = index.frame.band_coefficients(index.dim)
        chunk = -(-FULL_PANEL_COLUMNS // 16)
        panels = self._buffer(chunk * index.dim * 16, "full_panels").view(chunk, index.dim, 16)
        norm = self._buffer(chunk * 16, "full_norms")
        operands = dict(rows=r.contiguous().numpy(), threshold=threshold.numpy(), row_local=row_norm.numpy(),
                        row_global=rb.global_norm.numpy(), c1=c1, c2=c2, source=self.source, mean=self.frame_mean,
                        scale=index.frame.scale, centre=None if centre is None else centre.numpy(), col_ids=col_ids.numpy(),
                        col_pos=col_pos.numpy(), global_norms=index.norms.numpy(), row_ids=rb.ids.numpy(),
                        panels=panels.numpy(), norm=norm.numpy())
        return self.ops.full_tile(kind, operands, *args)

    def _step(self, kind: str, rb: _RowBlock, col_pos: torch.Tensor, low: Optional[bool], *args) -> Optional[bool]:
        """One tile of ``kind`` ("neighbours" / "union"). ``low`` None: try the lower-bound tile and
        keep it if it leaves few candidates; True: use it; False: a full tile. Returns the choice for
        the next tile (a lower-bound tile that left too many candidates turns it off)."""
        col_ids = self.index.order[col_pos]
        budget = FILTER_MAX_FRACTION * rb.ids.numel() * col_pos.numel()
        if self.panel:
            return self._panel_step(kind, rb, col_pos, col_ids, low, budget, *args)
        if low is not False:
            tile, lo, hi = self._tile(rb, col_pos, True)
            if low is True or self.ops.count_at_most(tile, hi, budget) <= budget:
                tests = getattr(self.ops, kind)(tile, lo, hi, rb.ids, col_ids, *args)
                self._count(filtered=tile.numel(), tests=tests)
                return tests <= budget
        tile, lo, hi = self._tile(rb, col_pos, False)
        self._count(tests=getattr(self.ops, kind)(tile, lo, hi, rb.ids, col_ids, *args))
        return False

    def _first_choice(self, mode: str) -> Optional[bool]:
        """How a row block starts: full tiles, or (auto) a try of the lower-bound tile, except after
        FILTER_RETRY failed tries in a row, when only every FILTER_RETRY-th row block tries."""
        self.row_blocks += 1
        if mode != "auto":
            return False
        if self.filter_failures >= FILTER_RETRY and self.row_blocks % FILTER_RETRY:
            return False
        return None

    def _record(self, tried: Optional[bool], low: Optional[bool]) -> None:
        if tried is None:
            self.filter_failures = 0 if low else self.filter_failures + 1

    def neighbours(self, rows, cols, counts, lists, mode: str = "full", need: Optional[int] = None) -> None:
        for r0 in range(0, rows.numel(), ROW_BLOCK):
            rb = _RowBlock(self, rows[r0 : r0 + ROW_BLOCK])
            low = self._first_choice(mode)
            # with ``need`` rows leave as soon as they have it: small column chunks first
            width = max(self.block // 8, 256) if need is not None else self.block
            c0 = 0
            while c0 < cols.numel():
                tried = low
                low = self._step("neighbours", rb, cols[c0 : c0 + width], low, counts, lists)
                self._record(tried, low)
                c0 += width
                width = min(2 * width, self.block)
                if need is not None:
                    open_rows = counts[rb.ids] < need
                    if not bool(open_rows.any()):
                        break
                    if not bool(open_rows.all()):
                        rb = rb.subset(open_rows)

    def union(self, rows, cols, parent, mode: str = "full", stop: Optional[Callable[[], bool]] = None) -> None:
        # with ``stop``, the rows come closest first and the first few usually make the join:
        # row blocks grow from 32 to ROW_BLOCK, so a search stops after a small tile
        height = 32 if stop is not None else ROW_BLOCK
        r0 = 0
        while r0 < rows.numel():
            if stop is not None and stop():
                return
            rb = _RowBlock(self, rows[r0 : r0 + height])
            r0 += height
            height = min(2 * height, ROW_BLOCK)
            low = self._first_choice(mode)
            for c0 in range(0, cols.numel(), self.block):
                tried = low
                low = self._step("union", rb, cols[c0 : c0 + self.block], low, parent)
                self._record(tried, low)


def _index_for(x: torch.Tensor, eps: float, block: int, native: bool, workers: int = 1, copy: bool = True) -> LeafIndex:
    """The leaf index of the points, with a frame copy of them where ``copy``: the C++ panel kernel
    packs every tile's columns straight from ``x`` and needs none (it was 16 MB of DBSCAN's memory
    at 32,000 x 128), while the reference's GEMM tiles re-read copied runs faster and the Triton
    kernels address the frame points by position."""
    leaf_size = max(8, min(LEAF_SIZE, block))
    filter_dims = FEW_DIMS if x.shape[0] < FEW_DIMS_BELOW else FILTER_DIMS
    return build_index(x, leaf_size=leaf_size, radius=eps, native=native, workers=workers, copy=copy, filter_dims=filter_dims)


@torch.no_grad()  # NumPy views and out= need tensors outside autograd
def _dbscan_on_cpu(x: torch.Tensor, eps: float, min_samples: int, block: int, epilogue_class):
    device = x.device
    points = exact_points(x)
    with worker_threads() as workers:
        native = epilogue_class is _CppEpilogue
        index = _index_for(points, eps, block, native=native, workers=workers, copy=not native)
        scale = index.frame.exact_scale
        epilogue = epilogue_class(points, scale, (eps * scale) ** 2)
        engine = CpuTiles(index, eps, epilogue, block, workers)
        core, root, stats = _core_and_roots(index, engine, eps * index.frame.scale, min_samples)
    return core.to(device), root.to(device), stats


def _dbscan_reference(x: torch.Tensor, eps: float, min_samples: int, block: int):
    return _dbscan_on_cpu(x, eps, min_samples, block, _TorchEpilogue)


def _dbscan_cpp(x: torch.Tensor, eps: float, min_samples: int, block: int):
    return _dbscan_on_cpu(x, eps, min_samples, block, _CppEpilogue)


@torch.no_grad()
def _dbscan_triton(x: torch.Tensor, eps: float, min_samples: int, block: int):
    """The same driver on x's device, every pass a fused Triton kernel (the exact test of the
    band's pairs on the host)."""
    from inform_fast.kernels.dbscan import TritonTiles

    points = exact_points(x)
    index = _index_for(x.detach(), eps, block, native=True)
    if index.frame.dtype != torch.float32:  # eps below float32's resolution of the data: the CPU's float64 tiles
        core, root, stats = _dbscan_on_cpu(points, eps, min_samples, block, _TorchEpilogue)
        return core.to(x.device), root.to(x.device), stats
    engine = TritonTiles(index, points, eps)
    core, root, stats = _core_and_roots(index, engine, eps * index.frame.scale, min_samples)
    return core.to(x.device), root.to(x.device), stats


# --- the driver -------------------------------------------------------------------------------

UNION_ROWS = 32  # core points per leaf that the union pass links to the near leaves' cores


def list_capacity(n: int, min_samples: int) -> int:
    """Neighbour list length: every non-core point's list must hold all its neighbours
    (< min_samples - 1 of them); longer lists join more of the core graph for free."""
    need = max(min_samples - 1, 1)
    cap = max(need, LIST_CAP)
    if n * cap > LIST_BUDGET:
        cap = max(need, LIST_BUDGET // max(n, 1))
    return cap


def _groups(index: LeafIndex, positions: torch.Tensor, target: int) -> list[tuple[torch.Tensor, list[int]]]:
    """Split sorted positions into (rows, leaves) groups of about ``target`` rows made of whole
    consecutive leaves."""
    if positions.numel() == 0:
        return []
    leaf_of = torch.searchsorted(index.starts, positions, right=True) - 1
    leaves, counts = torch.unique_consecutive(leaf_of, return_counts=True)
    groups, start, members = [], 0, []
    bounds = torch.cumsum(counts, 0).tolist()
    for k, leaf in enumerate(leaves.tolist()):
        members.append(leaf)
        if bounds[k] - start >= target or k == len(bounds) - 1:
            groups.append((positions[start : bounds[k]], members))
            start, members = bounds[k], []
    return groups


def _nearest_first(index: LeafIndex, members: list[int], leaves: torch.Tensor, centre_sqnorm: torch.Tensor) -> torch.Tensor:
    """``leaves`` ordered by their lower bound from the union of leaves ``members`` (then by centre
    distance), so the scan meets the neighbours first. The order only steers the scan, so the
    centre distances come from one product with all leaf centres (``centre_sqnorm``: their squared
    norms) rounded as it may: gathering the candidates' centres was 0.5 MB per worker at 32,000
    points, the largest temporary of the near pass."""
    m = torch.tensor(members)
    lo, hi = index.box_lo[m].min(0).values, index.box_hi[m].max(0).values
    centre = index.centre[m].mean(0)
    radius = ((index.centre[m] - centre).norm(dim=1) + index.radius[m]).max()
    distance = (centre_sqnorm - 2.0 * cross_products(index.centre, centre[None])[:, 0] + centre.dot(centre))[leaves].clamp_min_(0).sqrt_()
    box = box_gap(lo, hi, index.box_lo[leaves], index.box_hi[leaves])
    bound = torch.maximum(box, distance - radius - index.radius[leaves])
    by_distance = torch.argsort(distance)
    return leaves[by_distance[torch.argsort(bound[by_distance].clamp_min(0), stable=True)]]


def _leaf_groups(index: LeafIndex, target: int) -> list[list[int]]:
    """Consecutive leaves (spatially compact in k-d order) in groups of about ``target`` points."""
    groups, members, rows = [], [], 0
    for leaf, size in enumerate(index.leaf_sizes.tolist()):
        members.append(leaf)
        rows += size
        if rows >= target:
            groups.append(members)
            members, rows = [], 0
    if members:
        groups.append(members)
    return groups


def _core_and_roots(index: LeafIndex, engine, eps_frame: float, min_samples: int):
    """Returns (core [n] bool, root [n] int64: smallest core index of the cluster, -1 for noise,
    stats dict), indexed by original row, on the index's device; see the module docstring for the
    passes."""
    device = index.device
    n = index.n
    order = index.order
    need = min_samples - 1  # neighbours besides the point itself
    cap = list_capacity(n, min_samples)
    counts = torch.zeros(n, dtype=torch.int32, device=device)  # neighbours found (itself excluded)
    lists = torch.full((n, cap), -1, dtype=torch.int32, device=device)
    indptr, candidates = candidate_leaves(index, eps_frame, native=getattr(engine, "native", False), workers=engine.workers)
    indptr_list = indptr.tolist()
    sizes = index.leaf_sizes.tolist()
    starts = index.starts.tolist()
    centre_sqnorm = torch.linalg.vector_norm(index.centre, dim=1).square_()

    def group_candidates(members: list[int]) -> torch.Tensor:
        """The candidate leaves of a group's leaves, nearest first."""
        cand = torch.unique(torch.cat([candidates[indptr_list[l] : indptr_list[l + 1]] for l in members]).to(torch.int64))
        return _nearest_first(index, members, cand, centre_sqnorm)

    candidate_share = _candidate_fraction(index, indptr, candidates)
    groups = _leaf_groups(index, ROW_GROUP)
    near_of = [None] * len(groups)  # per group: ((first, end) row positions, columns of its nearest candidate leaves)
    done = torch.zeros(n, dtype=torch.bool, device=device)  # by position: the near pass saw every candidate

    def near_pass(g: int) -> None:
        """Group g against its nearest candidate leaves (their choice runs on the workers too: one
        ordering per group was a tenth of the run at 32,000 points when done up front)."""
        members = groups[g]
        cand = group_candidates(members)
        covered = np.cumsum([sizes[c] for c in cand.tolist()])
        take = max(1, int(np.searchsorted(covered, NEAR_COLUMNS, side="right")))
        first_row, end_row = starts[members[0]], starts[members[-1] + 1]
        near_of[g] = ((first_row, end_row), index.positions(cand[:take]))
        done[first_row:end_row] = take == cand.numel()  # each group its own rows
        engine.neighbours(torch.arange(first_row, end_row, device=device), near_of[g][1], counts, lists, mode="auto")

    # 1. near pass: every group of leaves against its nearest candidate leaves
    run_parallel(near_pass, range(len(groups)), engine.workers)
    pairs = {"near": engine.pairs}

    # 2. far pass: points still below min_samples whose group has more candidates, counted afresh
    # against all of them, nearest first; a row stops once it has min_samples (it is core then)
    far = torch.nonzero((counts[order] < need) & ~done).flatten()
    # where the bounds prune, a group's candidates grow with its extent, so far groups stay small;
    # where they do not (diffuse data), every group sees ~all columns and bigger groups cost less
    far_group = FAR_GROUP if candidate_share < DENSE_CANDIDATES else ROW_GROUP
    if far.numel():
        counts[order[far]] = 0
        lists[order[far]] = -1
        run_parallel(lambda group: engine.neighbours(group[0], index.positions(group_candidates(group[1])), counts, lists,
                                                     mode="auto", need=need),
                     _groups(index, far, far_group), engine.workers)
    pairs["far"] = engine.pairs - pairs["near"]

    core = counts >= need  # by original row
    # a list holds every neighbour where the count is final and did not overflow: groups the
    # near pass covered, and the far points that stayed below min_samples (non-core)
    complete = torch.zeros(n, dtype=torch.bool, device=device)
    complete[order] = done & (counts[order] <= cap)
    complete[order[far]] = counts[order[far]] < need
    far_points = int(far.numel())
    del far
    engine.release_scratch()  # the passes below run on this thread alone

    # 3. union: every listed edge between core points; the near leaves' cores from a few cores
    # per group; then the components of the cores whose lists are incomplete
    parent = torch.arange(n, dtype=torch.int64, device=device)
    if getattr(engine, "native", False) and device.type == "cpu":
        # the same edges without materialising them (2% of the run on the 1/k spectrum at 32,000)
        from inform_fast import _native

        _native.module().union_lists(parent.numpy(), lists.numpy(), counts.numpy(), core.numpy())
    elif bool(core.any()):
        listed = torch.clamp(counts, max=cap)
        src = torch.nonzero(core).flatten()
        valid = torch.arange(cap, device=device)[None, :] < listed[src][:, None]
        a = src[:, None].expand(-1, cap)[valid]
        b = lists[src][valid].to(torch.int64)
        keep = core[b]
        _union_edges(parent, a[keep], b[keep])
    core_position = core[order]
    for (first_row, end_row), cols in near_of:
        rows = torch.arange(first_row, end_row, device=device)
        rows = rows[core_position[rows]]
        if rows.numel() == 0:
            continue
        # one core per component present in the group (linking it links the component), then
        # evenly spread ones up to UNION_ROWS
        _, first = np.unique(parent[order[rows]].cpu().numpy(), return_index=True)
        spread = torch.linspace(0, rows.numel() - 1, min(rows.numel(), UNION_ROWS)).round().long()
        pick = torch.unique(torch.cat([torch.from_numpy(first), spread]))
        engine.union(rows[pick.to(device)], cols[core_position[cols]], parent, mode="auto")
    pairs["union"] = engine.pairs - pairs["near"] - pairs["far"]
    incomplete = torch.nonzero(core_position & ~complete[order]).flatten()  # positions
    joined = _join_components(index, engine, parent, incomplete, eps_frame)
    pairs["join"] = engine.pairs - pairs["near"] - pairs["far"] - pairs["union"]

    root = torch.full((n,), -1, dtype=torch.int64, device=device)
    root[core] = parent[core]

    # 4. borders: the smallest core neighbour in the (complete) list
    border = torch.nonzero(~core & (counts > 0)).flatten()
    if border.numel():
        neighbours = lists[border].to(torch.int64)
        valid = (torch.arange(cap, device=device)[None, :] < counts[border][:, None]) & (neighbours >= 0)
        valid &= core[neighbours.clamp(min=0)]
        first = torch.where(valid, neighbours, torch.full_like(neighbours, n)).min(1).values
        found = first < n
        root[border[found]] = root[first[found]]
    stats = {
        "n": n, "leaves": index.n_leaves, "tree_dims": int(index.box_lo.shape[1]), "filter_dims": int(index.top.shape[1]),
        "frame_dtype": str(index.frame.dtype).replace("torch.", ""),
        **{f"pairs_{k}": v for k, v in pairs.items()}, "pairs_full": engine.pairs,
        "pairs_filtered": engine.filtered_pairs, "exact_tests": engine.exact_tests, "far_points": far_points,
        "component_pairs_searched": joined, "candidate_fraction": candidate_share,
    }
    return core, root, stats


def _candidate_fraction(index: LeafIndex, indptr: torch.Tensor, candidates: torch.Tensor, chunk: int = 1 << 16) -> float:
    """Fraction of all n^2 pairs that the leaf bounds leave as candidates, over ``chunk`` leaf
    pairs at a time: at 10^5 points on the 1/k spectrum (3.8 M leaf pairs) the leaf pairs'
    owners and sizes at once were 122 MB, four fifths of DBSCAN's heap."""
    sizes = index.leaf_sizes.to(torch.float64)
    total = 0.0
    for a in range(0, candidates.numel(), chunk):
        pairs = torch.arange(a, min(a + chunk, candidates.numel()), device=indptr.device)
        owner = torch.searchsorted(indptr, pairs, right=True) - 1
        total += float((sizes[owner] * sizes[candidates[a : a + chunk].to(torch.int64)]).sum())
    n = float(sizes.sum())
    return total / (n * n)


def _union_edges(parent: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.numel() == 0:
        return
    if dispatch.cpp_available() and parent.device.type == "cpu":
        from inform_fast import _native

        _native.module().union_edges(parent.numpy(), a.contiguous().numpy(), b.contiguous().numpy())
        return
    host = parent.cpu()
    union_roots(host, a.cpu(), b.cpu())
    parent.copy_(host)


def _gap_floor(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[P, C] float64 lower bounds of the distances between ``points`` [P, D] and ``centres``
    [C, D] (float64): a GEMM in the points' precision (float32 at most 1/4 of float64's cost
    here) less its error band (``gamma_D (|p| + |c|)^2`` on the squared distance, doubled, in
    float32's roundoff at least); a pruning bound may understate, never overstate."""
    c = centres.to(points.dtype)
    p_norm = points.norm(dim=1).to(torch.float64)
    c_norm = c.norm(dim=1).to(torch.float64)
    band = dot_band_coefficient(points.shape[1], FLOAT32_ROUNDOFF) * (p_norm[:, None] + c_norm[None, :] + 1e-30) ** 2
    d2 = cross_products(points, c).mul_(-2.0).add_((c * c).sum(1)[None, :]).to(torch.float64) + (points * points).sum(1).to(torch.float64)[:, None]
    return (d2 - band).clamp_min(0).sqrt() - 1e-6 * (p_norm[:, None] + c_norm[None, :])


def _ball_gap(index: LeafIndex, positions: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
              chunk_elements: int = 1 << 18) -> torch.Tensor:
    """[P] float64: for each of the index's points at ``positions``, a lower bound of its distance
    to the nearest of the balls (``centres`` [C, D], ``radii`` [C]), in row chunks of about
    ``chunk_elements / C`` (a giant component against hundreds of small ones held a [P, C] float64
    matrix of 1 GB; at 2^21 elements a chunk's temporaries were still 4x the index at 32,000
    duplicated rows)."""
    # and at most a quarter of ``chunk_rows`` rows (against one ball a chunk would be 2^18 rows, 128 MB at D = 128)
    rows = max(1, min(chunk_rows(positions.device) // 4, chunk_elements // max(1, centres.shape[0])))
    if positions.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=index.device)
    return torch.cat([(_gap_floor(index.gather(positions[a : a + rows]), centres) - radii).min(1).values
                      for a in range(0, positions.numel(), rows)])


def _join_components(index: LeafIndex, engine, parent: torch.Tensor, incomplete: torch.Tensor, eps_frame: float) -> int:
    """Join the components of the core points whose lists are incomplete (positions
    ``incomplete``; every other edge is known): components whose bounding balls come within eps
    are searched for a pair within eps, rows from the smaller component (batched ~ROW_BLOCK rows),
    columns from its partners restricted to the points that can reach the rows' balls, closest
    first, stopping once every pair of the batch is joined. Returns the number of component pairs
    searched."""
    if incomplete.numel() == 0:
        return 0
    comps, member = torch.unique(parent[index.order[incomplete]], return_inverse=True)
    k = comps.numel()
    if k <= 1:
        return 0
    device = incomplete.device
    sizes = torch.bincount(member, minlength=k)
    # centres and radii in float64, row chunks at a time: at 10^6 latents most core points are
    # here, and a float64 copy of them (and its difference from the centres) was 1.6 GB; chunks
    # of 2^16 rows were still 90 MB, five times the index, at 32,000 points (``chunk_rows``: small on
    # the CPU, large on a GPU where each chunk costs launches)
    centre = torch.zeros((k, index.dim), dtype=torch.float64, device=device)
    rows = chunk_rows(device) // 4  # four float64 copies of a chunk at once (3 MB, a third of the heap, at 2^10 rows)
    for a in range(0, incomplete.numel(), rows):
        centre.index_add_(0, member[a : a + rows], index.gather(incomplete[a : a + rows]).to(torch.float64))
    centre /= sizes[:, None]
    radius = torch.zeros(k, dtype=torch.float64, device=device)
    for a in range(0, incomplete.numel(), rows):
        spread = (index.gather(incomplete[a : a + rows]).to(torch.float64) - centre[member[a : a + rows]]).norm(dim=1)
        radius.scatter_reduce_(0, member[a : a + rows], spread, reduce="amax")
    reach = eps_frame + 2 * index.slack
    # partners: the larger side of each touching pair (size, then id), so each pair is searched once
    key = sizes.to(torch.float64) * (k + 1) + torch.arange(k, device=device)
    part_a, part_b = [], []
    # blocks of ~2^14 component pairs: with 10^4 components, blocks of 1024 rows were 90 MB of
    # temporaries, five times the index itself at 32,000 points; 2^18 were still 6 MB of a 16 MB
    # heap on 1,280 small clusters, 2^16 1.6 MB of 10 (a hundred blocks cost nothing next to the searches)
    step = max(1, min(1024, (1 << 14) // k))
    centre_sqnorm = torch.linalg.vector_norm(centre, dim=1).square_()  # (centre * centre) would be a copy of them
    for a in range(0, k, step):
        gap = distance_floor(centre[a : a + step], centre, centre_sqnorm).sub_(radius[a : a + step, None]).sub_(radius[None, :])
        i, j = torch.nonzero((gap <= reach) & (key[a : a + step, None] < key[None, :]), as_tuple=True)
        part_a.append(i + a)
        part_b.append(j)
    part_a, part_b = torch.cat(part_a), torch.cat(part_b)
    if part_a.numel() == 0:
        return 0
    # pairs in the order of their smaller side's key, so a batch holds whole components
    by_key = torch.argsort(key[part_a], stable=True)  # keys are distinct: whole components stay together
    part_a, part_b = part_a[by_key], part_b[by_key]
    # every component's positions in one array (a tensor per component was a few hundred bytes of
    # heap each, long-lived between the join's temporaries: 1,280 of them fragmented the heap)
    by_component = incomplete[torch.argsort(member)]
    bounds = [0] + torch.cumsum(sizes, 0).tolist()
    searched = 0

    def members(components: list[int]) -> torch.Tensor:
        return torch.cat([by_component[bounds[c] : bounds[c + 1]] for c in components])

    def near_leaves(components: list[int]) -> torch.Tensor:
        """[n_leaves] bool: leaves whose ball comes within eps of one of the components' balls (16
        components at a time: one [components, leaves] matrix of gaps for all was 0.6 MB)."""
        near = torch.zeros(index.n_leaves, dtype=torch.bool, device=device)
        for a in range(0, len(components), 16):
            part = components[a : a + 16]
            gap = distance_floor(centre[part], index.centre).sub_(radius[part, None]).sub_(index.radius[None, :])
            near |= (gap <= reach).any(0)
        return near

    def search(pair_a: torch.Tensor, pair_b: torch.Tensor) -> None:
        nonlocal searched
        alive = parent[comps[pair_a]] != parent[comps[pair_b]]
        pair_a, pair_b = pair_a[alive], pair_b[alive]
        if pair_a.numel() == 0:
            return
        searched += pair_a.numel()
        row_comps = torch.unique(pair_a).tolist()
        col_comps = torch.unique(pair_b).tolist()
        rows = members(row_comps)
        cols = members(col_comps)
        # columns only from leaves whose ball comes within eps of a row component's ball, then
        # points within eps of such a ball (and rows likewise against the partners' balls)
        cols = cols[near_leaves(row_comps)[torch.searchsorted(index.starts, cols, right=True) - 1]]
        if cols.numel() == 0:
            return
        row_gap = _ball_gap(index, rows, centre[col_comps], radius[col_comps])
        col_gap = _ball_gap(index, cols, centre[row_comps], radius[row_comps])
        rows, row_gap = rows[row_gap <= reach], row_gap[row_gap <= reach]
        cols, col_gap = cols[col_gap <= reach], col_gap[col_gap <= reach]
        if rows.numel() == 0 or cols.numel() == 0:
            return
        rows, cols = rows[torch.argsort(row_gap)], cols[torch.argsort(col_gap)]  # closest first
        a_t, b_t = comps[pair_a], comps[pair_b]
        engine.union(rows, cols, parent, mode="auto", stop=lambda: bool((parent[a_t] == parent[b_t]).all()))

    # batches of about ROW_BLOCK rows: consecutive row components (whole) with all their pairs
    first = torch.ones(part_a.numel(), dtype=torch.bool, device=device)
    first[1:] = part_a[1:] != part_a[:-1]
    starts = torch.nonzero(first).flatten().tolist() + [part_a.numel()]
    comp_sizes = sizes[part_a[first]].tolist()
    begin, batch_rows = 0, 0
    for c, size in enumerate(comp_sizes):
        batch_rows += size
        if batch_rows >= ROW_BLOCK or c == len(comp_sizes) - 1:
            search(part_a[starts[begin] : starts[c + 1]], part_b[starts[begin] : starts[c + 1]])
            begin, batch_rows = c + 1, 0
    return searched
