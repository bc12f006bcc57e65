"""Exact k nearest references, tiled: never holds the full [q, m] distance matrix.

``knn_distance(queries, references, k)`` returns, for each query, the k smallest Euclidean
distances to the references and their indices; ``nearest_distance`` is the case k = 1. Exact:
the result is that of the float64 sum of squared differences of the original values (what
scikit-learn's tree searches compute), ties ordered by reference index, for any finite input
(``inform_fast.spatial`` explains the frame, the error band and the exact test).

How the references are found:

* **Few queries** (at most ``CPP_MAX_QUERIES``, the ``cpp`` backend): a direct search in C++
  that streams the references once and computes every distance exactly in float64 (the
  fastest exact search when the GEMM cannot amortise).
* **Pruned** (at least ``INDEX_MIN_QUERIES`` queries and ``INDEX_MIN_REFS`` references): a
  k-d tree of leaves over the references' top principal coordinates; the queries in groups of
  ``QUERY_GROUP`` (themselves ordered by a k-d tree, so a group is compact) visit the leaves
  nearest first, one GEMM tile per chunk of leaves centred on the group, and stop at the first
  leaf whose lower bound exceeds the group's current k-th distance. On latents whose variance
  lives in a few directions this visits a few leaves per group instead of all of them. With the
  C++ backend, a group's visit after its first chunk is one call (``_C.knn_bound_group``) that
  returns to Python only where a full tile is needed.
* **Brute** (otherwise, or when the first ``PILOT_GROUPS`` groups visit more than
  ``BRUTE_FRACTION`` of the leaves, as on isotropic high-dimensional data): every query block
  against every reference chunk in storage order, references read once per chunk.

In the tiles a reference is tested exactly only if its GEMM value, less the error band, is
within the query's current k-th distance: a handful of tests per query. In the pruned search,
once a group's heaps are full, each further chunk is first scored in the references' top
principal coordinates (``index.top``, 16 of them): that distance, less the stored points' slack,
is a lower bound of the full one, so only the pairs it leaves within a query's k-th distance are
tested exactly (on InfoRM latents, one pair in a thousand). The C++ backend computes that bound in
registers (``csrc/bound_block.h``: AVX2 where the CPU has it); rows whose bound leaves more than
``BOUND_MAX_FRACTION`` of their pairs go through full tiles instead.

Backends (``inform_fast.dispatch``, ops ``"knn_distance"`` and ``"nearest_distance"``):
``reference`` (PyTorch tiles and epilogue, any device), ``cpp`` (the C++ direct search and tile
epilogue of ``inform_fast._C``, OpenMP-free workers), ``triton`` (CUDA: the same tiles as
PyTorch's on the GPU; see ``docs/performance.md`` for the GPU design).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from inform_fast import dispatch
from inform_fast.detect.inputs import as_latents
from inform_fast.ops.registry import define_op
from inform_fast.spatial import (
    LeafIndex,
    _kd_order,
    bound_columns,
    box_gap,
    build_index,
    chunk_rows,
    exact_scale_for,
    fit_frame,
    frame_rows,
    max_abs,
    principal_coordinates,
    run_parallel,
    tile_band,
    tree_dims_for,
    worker_threads,
)
from inform_fast.validation import check_positive_int

# backends: inform_fast.dispatch.BACKENDS

CPP_MAX_QUERIES = 48  # the direct C++ search up to this many queries (measured: see the module docstring)
INDEX_MIN_QUERIES = 256  # a tree over the references pays from this many queries ...
INDEX_MIN_REFS = 8192  # ... and this many references
QUERY_GROUP = 1024  # queries that visit the leaves together
FIRST_COLUMNS = 2048  # references in a group's first chunk (the chunks then double up to block_refs)
# (measured, 10^5 InfoRM latents against 10^5, k = 10, 2 cores: groups of 256 / first chunks of 512
# computed 5.9% of the pairs in 5.9-7.2 s, 1024 / 2048 9.4% in 4.5 s: small tiles cost more in
# per-tile work than their pairs saved; 2048 / 2048 12% in 4.5-5.3 s)
QUERY_BLOCK = 512  # query rows per brute-force tile
LEAF_SIZE = 64
BOUND_MAX_FRACTION = 1 / 32  # a lower-bound tile leaving more pairs than this: the full tile instead
PILOT_GROUPS = 4  # groups searched before deciding between pruning and brute force
BRUTE_FRACTION = 0.5  # pilot groups visiting more than this share of the leaves: brute force


_GROUP_DONE, _GROUP_NOT_FULL, _GROUP_FULL_TILE = 0, 1, 2  # knn_bound_group's status


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --- epilogues --------------------------------------------------------------------------------


class _TorchKnn:
    """Heap updates in PyTorch (the reference): the heaps are [q, k] arrays of (exact squared
    distance, id), kept sorted by (distance, id)."""

    def __init__(self, queries: torch.Tensor, refs: torch.Tensor, scale: float):
        self.queries, self.refs, self.scale = queries, refs, scale

    def exact(self, q_ids: torch.Tensor, r_ids: torch.Tensor) -> torch.Tensor:
        diff = self.queries[q_ids].to(torch.float64) * self.scale - self.refs[r_ids].to(torch.float64) * self.scale
        return (diff * diff).sum(1)

    def update(self, partial, q_norm, band, frame_to_exact, row_ids, col_ids, best, best_index, bound: bool = False) -> int:
        worst = best[row_ids, -1] * frame_to_exact  # frame units
        value = partial.to(torch.float64) + q_norm.to(torch.float64)[:, None]  # approximate squared distances
        k = best.shape[1]
        if value.shape[1] >= k and not bound:
            # the tile itself holds k references within its k-th value + band: nothing beyond can enter
            kth = torch.kthvalue(value, k, dim=1).values
            worst = torch.minimum(worst, kth + band)
        i, j = torch.nonzero(value <= (worst + band)[:, None], as_tuple=True)
        if i.numel() == 0:
            return 0
        columns, j_compact = torch.unique(j, return_inverse=True)
        values = torch.full((row_ids.numel(), columns.numel()), float("inf"), dtype=torch.float64, device=best.device)
        values[i, j_compact] = self.exact(row_ids[i], col_ids[j])
        ids = col_ids[columns].expand(row_ids.numel(), -1)
        merged_d = torch.cat([best[row_ids], values], dim=1)
        merged_i = torch.cat([best_index[row_ids], torch.where(torch.isinf(values), torch.full_like(ids, -1), ids)], dim=1)
        key = torch.where(merged_i < 0, torch.full_like(merged_i, torch.iinfo(torch.int64).max), merged_i)
        by_id = torch.argsort(key, dim=1, stable=True)
        by_distance = torch.argsort(merged_d.gather(1, by_id), dim=1, stable=True)
        take = by_id.gather(1, by_distance)[:, : best.shape[1]]
        best[row_ids] = merged_d.gather(1, take)
        best_index[row_ids] = merged_i.gather(1, take)
        return int(i.numel())


    def bound_update(self, q_low, cols_low, col_norm2, q_norm2, band, slack, worst, frame_to_exact, row_ids, col_ids,
                     best, best_index, budget: int, gate=None) -> tuple[int, int]:
        """The lower-bound tile as a GEMM (``_Search.bound_tile``): (rows done, exact tests). The
        leaf ``gate`` (which only skips work the bound would reject) is the C++ kernel's alone."""
        # (sqrt(w) + slack)^2 = w + slack (2 sqrt(w) + slack); w, the tile-start worst, only falls
        band = band + slack * (2.0 * worst.sqrt() + slack)
        partial = torch.addmm(col_norm2[None, :], q_low, cols_low.T, alpha=-2.0)
        left = (partial.to(torch.float64) + q_norm2.to(torch.float64)[:, None] <= (worst + band)[:, None]).sum(1)
        over = torch.nonzero(torch.cumsum(left, 0) > budget).flatten()
        rows = row_ids.numel() if over.numel() == 0 or int(over[0]) + 1 == row_ids.numel() else int(over[0]) + 1
        tests = self.update(partial[:rows], q_norm2[:rows], band[:rows], frame_to_exact, row_ids[:rows], col_ids,
                            best, best_index, bound=True)
        return rows, tests


class _CppKnn:
    """The same heaps (max-heaps, unsorted) updated by ``inform_fast._C.knn_tile_update``."""

    def __init__(self, queries: torch.Tensor, refs: torch.Tensor, scale: float):
        from inform_fast import _native

        self.C = _native.module()
        self.queries, self.refs, self.scale = queries.numpy(), refs.numpy(), scale
        self.torch = _TorchKnn(queries, refs, scale)

    def update(self, partial, q_norm, band, frame_to_exact, row_ids, col_ids, best, best_index) -> int:
        if partial.dtype != torch.float32:
            return self.torch.update(partial, q_norm, band, frame_to_exact, row_ids, col_ids, best, best_index)
        band32 = (band * (1 + 1e-6)).to(torch.float32)  # rounded up by the factor (and tile_limit rounds up)
        return self.C.knn_tile_update(partial.numpy(), q_norm.to(torch.float32).numpy(), band32.numpy(), frame_to_exact,
                                      row_ids.numpy(), col_ids.numpy(), self.queries, self.refs, self.scale,
                                      best.numpy(), best_index.numpy())

    def bound_update(self, q_low, cols_low, col_norm2, q_norm2, band, slack, worst, frame_to_exact, row_ids, col_ids,
                     best, best_index, budget: int, gate=None) -> tuple[int, int]:
        if q_low.dtype != torch.float32:
            return self.torch.bound_update(q_low, cols_low, col_norm2, q_norm2, band, slack, worst, frame_to_exact, row_ids,
                                           col_ids, best, best_index, budget)
        band32 = (band * (1 + 1e-6)).to(torch.float32)
        cols_t, norm_padded = bound_columns(cols_low, col_norm2)
        gate_arrays = {} if gate is None else dict(zip(("gate_starts", "gate_lo", "gate_hi", "gate_rows"),
                                                       (t.contiguous().numpy() for t in gate)))
        done = self.C.knn_bound_update(q_low.numpy(), cols_t, norm_padded, q_norm2.to(torch.float32).numpy(),
                                       band32.numpy(), slack, frame_to_exact, row_ids.numpy(), col_ids.numpy(),
                                       self.queries, self.refs, self.scale, best.numpy(), best_index.numpy(), int(budget),
                                       **gate_arrays)
        return (row_ids.numel(), done) if done >= 0 else (-done, budget)

    def bound_group(self, index: LeafIndex, leaves: torch.Tensor, bound: np.ndarray, covered: np.ndarray, visited: int,
                    width: int, max_width: int, slack: float, rows: torch.Tensor, low: torch.Tensor, box_coords: torch.Tensor,
                    centre_low: torch.Tensor, search: "_Search"):
        """``_C.knn_bound_group`` over one query group (see ``_pruned_group``): (status, visited,
        width, open rows, rows needing a full tile, that chunk's first leaf, lower-bound pairs,
        exact tests), the row lists as indices into ``rows``."""
        if getattr(self, "_index_arrays", (None,))[0] is not index:
            self._index_arrays = (index, index.top.numpy(), index.starts.numpy(), index.order.numpy(), index.norms.numpy(),
                                  index.box_lo.numpy(), index.box_hi.numpy(), *search.frame.band_coefficients(index.top.shape[1]))
        _, top, starts, order, norms, box_lo, box_hi, c1, c2 = self._index_arrays
        return self.C.knn_bound_group(top, starts, order, norms, box_lo, box_hi, leaves.numpy(), bound, covered, visited, width,
                                      max_width, slack, rows.numpy(), low.numpy(), box_coords.numpy(),
                                      search.q_global[rows].numpy(), centre_low.numpy(), c1, c2, search.frame_to_exact,
                                      self.queries, self.refs, self.scale, search.best.numpy(), search.best_index.numpy(),
                                      BOUND_MAX_FRACTION)


# --- the tiled search -------------------------------------------------------------------------


class _Search:
    """State of one search: the frame's data, the heaps, the epilogue, counters."""

    def __init__(self, queries, refs, k, block, epilogue_class, workers):
        self.k, self.block, self.workers = k, block, workers
        device = queries.device
        self.best = torch.full((queries.shape[0], k), float("inf"), dtype=torch.float64, device=device)
        self.best_index = torch.full((queries.shape[0], k), -1, dtype=torch.int64, device=device)
        self.queries, self.refs = queries, refs
        self.epilogue_class = epilogue_class
        self.pairs = 0
        self.leaves_visited = 0.0
        self.strategy = "brute"

    def start(self, frame) -> None:
        self.frame = frame
        self.ops = self.epilogue_class(self.queries, self.refs, frame.exact_scale)
        self.bound_pairs = 0  # pairs in lower-bound tiles
        self.bound_tests = 0
        # heap values are exact squared distances of the originals times exact_scale^2
        self.frame_to_exact = (frame.scale / frame.exact_scale) ** 2
        # the queries in the frame are mapped a group at a time (``query_rows``), not copied whole:
        # at 10^6 x 128 a frame copy is 0.5 GB
        self.native = self.epilogue_class is _CppKnn
        self.q_global = torch.empty(self.queries.shape[0], dtype=torch.float64, device=self.queries.device)
        rows = chunk_rows(self.queries.device)

        def norms(a: int) -> None:
            y = frame.apply(self.queries[a : a + rows])
            self.q_global[a : a + rows] = (y * y).sum(1).sqrt().to(torch.float64) * (1 + 1e-5)

        run_parallel(norms, range(0, self.queries.shape[0], rows), self.workers)

    def query_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[R, D] the queries ``rows`` in the frame (``frame.apply``'s values)."""
        return frame_rows(self.frame, self.queries, rows, self.native)

    def _operands(self, q_rows: torch.Tensor, q_local: torch.Tensor, centre: Optional[torch.Tensor], cols: torch.Tensor,
                  col_global: torch.Tensor):
        """(cols less ``centre``, their squared norms, the rows' squared norms, the band [R]) of a
        tile of rows ``q_local`` (queries ``q_rows``) against ``cols``, full or principal coordinates."""
        if centre is not None:
            cols = cols - centre
        col_norm2 = (cols * cols).sum(1)
        q_norm2 = (q_local * q_local).sum(1)
        band = tile_band(self.frame, cols.shape[1], q_norm2.to(torch.float64).sqrt(), float(col_norm2.max()) ** 0.5 * (1 + 1e-6),
                         self.q_global[q_rows], float(col_global.max()))
        return cols, col_norm2, q_norm2, band

    def tile(self, q_rows: torch.Tensor, q_local: torch.Tensor, centre: Optional[torch.Tensor], cols: torch.Tensor,
             col_ids: torch.Tensor, col_global: torch.Tensor) -> None:
        """Rows ``q_local`` (queries ``q_rows`` in the tile's frame) against frame points ``cols``."""
        cols, col_norm2, q_norm2, band = self._operands(q_rows, q_local, centre, cols, col_global)
        partial = torch.addmm(col_norm2[None, :], q_local, cols.T, alpha=-2.0)  # ||c||^2 - 2 q.c
        self.ops.update(partial, q_norm2, band, self.frame_to_exact, q_rows, col_ids, self.best, self.best_index)

    def bound_tile(self, q_rows: torch.Tensor, q_low: torch.Tensor, centre_low: torch.Tensor, cols_low: torch.Tensor,
                   col_ids: torch.Tensor, col_global: torch.Tensor, worst: torch.Tensor, slack: float,
                   gate: Optional[tuple] = None) -> tuple[int, int]:
        """Rows ``q_low`` (principal coordinates of queries ``q_rows``, centred on ``centre_low``)
        against frame points' principal coordinates ``cols_low``. The distance there is a lower
        bound of the full one (of the stored points: less ``slack``), so only the pairs it leaves
        within a query's current k-th distance are tested exactly. ``worst`` [R]: the heaps' k-th
        distances at the start, frame units, all finite. Returns (rows done, exact tests): the
        rows from the first one on that would need more than BOUND_MAX_FRACTION of their pairs
        tested are left to a full tile. ``gate``: (column offsets of the tile's leaves [L + 1]
        int64, their boxes' lo and hi [L, d] and the rows' coordinates [R, d], float64, in the
        index's tree coordinates), with which a row skips the leaves beyond its own reach."""
        cols_low, col_norm2, q_norm2, band = self._operands(q_rows, q_low, centre_low, cols_low, col_global)
        budget = int(BOUND_MAX_FRACTION * q_rows.numel() * cols_low.shape[0])
        return self.ops.bound_update(q_low, cols_low, col_norm2, q_norm2, band, slack, worst, self.frame_to_exact, q_rows,
                                     col_ids, self.best, self.best_index, budget, gate=gate)

    def brute(self, q_rows: torch.Tensor, refs: torch.Tensor) -> None:
        """Queries ``q_rows`` against all references ``refs`` (original values), in storage order,
        reference chunks outer, each mapped through the frame as it comes (no copy of all of them)."""
        blocks = [q_rows[a : a + QUERY_BLOCK] for a in range(0, q_rows.numel(), QUERY_BLOCK)]
        for r0 in range(0, refs.shape[0], self.block):
            chunk = self.frame.apply(refs[r0 : r0 + self.block])
            ids = torch.arange(r0, r0 + chunk.shape[0], device=refs.device)
            chunk_global = (chunk * chunk).sum(1).sqrt().to(torch.float64) * (1 + 1e-5)
            run_parallel(lambda rows: self.tile(rows, self.query_rows(rows), None, chunk, ids, chunk_global), blocks, self.workers)
            self.pairs += q_rows.numel() * chunk.shape[0]


def _brute_search(search: _Search, refs: torch.Tensor) -> None:
    search.start(fit_frame(refs, also=search.queries))
    search.brute(torch.arange(search.queries.shape[0], device=refs.device), refs)


def _query_groups(top: torch.Tensor, native: bool = False) -> list[torch.Tensor]:
    """Queries in compact groups of <= QUERY_GROUP: a k-d order of their principal coordinates
    ``top`` [n, p]."""
    dims = min(tree_dims_for(top.shape[0], QUERY_GROUP), top.shape[1])
    order, sizes = _kd_order(top[:, :dims].to(torch.float32).cpu().numpy(), QUERY_GROUP, native=native)
    order = torch.from_numpy(order).to(top.device)
    bounds = np.cumsum([0] + sizes)
    return [order[bounds[g] : bounds[g + 1]] for g in range(len(sizes))]


def _pruned_group(search: _Search, index: LeafIndex, rows: torch.Tensor, top: torch.Tensor) -> float:
    """One query group over the leaves, nearest first, until the lower bound passes the group's
    k-th distance. Returns the share of leaves visited."""
    q = search.query_rows(rows)
    centre = q.mean(0)
    q_local = q - centre
    centre64 = centre.to(torch.float64)
    radius = (q_local * q_local).sum(1).sqrt().max().to(torch.float64) * (1 + 1e-5)
    g_top = top[rows]
    k_dims = index.box_lo.shape[1]
    # the bound of box_lower_bound, its ball term in the principal coordinates (a projection
    # never lengthens: still a lower bound, at 16 coordinates instead of D per leaf), the one
    # distance to the leaves' centres also ordering them
    distance = torch.cdist(index.frame.project(centre64[None]), search.centre_top)[0]
    projected = box_gap(g_top[:, :k_dims].min(0).values, g_top[:, :k_dims].max(0).values, index.box_lo, index.box_hi)
    bound = torch.maximum(projected, distance - radius - index.radius) - search.slack
    by_distance = torch.argsort(distance)
    leaves = by_distance[torch.argsort(bound[by_distance].clamp_min(0), stable=True)]
    # NumPy arrays, not lists: a list of every leaf's bound per group kept the garbage collector busy
    bound_np = bound[leaves].cpu().numpy()  # ascending
    covered = np.concatenate([[0], np.cumsum(index.leaf_sizes[leaves].cpu().numpy())])  # points in leaves[:i]
    visited = 0
    width = FIRST_COLUMNS  # small chunks first: the nearest leaves set the reach that prunes the rest
    active, q_active, top_active = rows, q_local, g_top[:, :k_dims].contiguous()
    centre_low = g_top.mean(0)
    centre_low32 = centre_low.to(index.top.dtype)
    low_active = (g_top - centre_low).to(index.top.dtype)
    use_bound = True
    slack = search.slack
    in_native = search.native and index.top.dtype == torch.float32 and index.device.type == "cpu"
    # the C++ loop takes the bounds ascending: the visit order sorted them clamped at 0
    bound_visit = np.maximum(bound_np, 0.0) if in_native else None
    while visited < leaves.numel():
        if in_native and use_bound and visited:
            # after the first chunk (a full tile, which fills the heaps) the rest of the loop below
            # in C++ (``_C.knn_bound_group``), while the lower-bound tiles suffice: at 5x10^5 x 10^6,
            # k = 22, the loop's Python (per chunk: positions, boxes, operands, bands) was ~28% of
            # the workers' time, and held the lock that the other worker needed to return
            status, visited, width, keep, full_rows, failed_start, pairs, tests = search.ops.bound_group(
                index, leaves, bound_visit, covered, visited, width, search.block, slack, active, low_active,
                top_active, centre_low32, search)
            search.bound_pairs += pairs
            search.bound_tests += tests
            if status == _GROUP_FULL_TILE:  # the bound left too many pairs: these rows get the full tile
                full = torch.from_numpy(full_rows)
                positions = index.positions(leaves[failed_start:visited])
                search.tile(active[full], q_active[full], centre, index.gather(positions), index.order[positions],
                            index.norms[positions])
                search.pairs += full.numel() * positions.numel()
                use_bound = False
            keep = torch.from_numpy(keep)
            active, q_active, top_active, low_active = active[keep], q_active[keep], top_active[keep], low_active[keep]
            if status == _GROUP_DONE or active.numel() == 0:
                break
            if status == _GROUP_FULL_TILE:
                continue  # full tiles from here on, below
            # _GROUP_NOT_FULL: a heap is not full yet, one chunk below
        # each query's k-th distance so far, in frame units: a query whose k-th distance is below
        # the next leaf's bound (the smallest of the rest) is finished and leaves the group, so a
        # few far queries no longer drag the whole group through distant leaves
        worst = search.best[active].max(1).values * search.frame_to_exact  # the C++ heaps are unsorted
        open_rows = worst.sqrt() >= float(bound_np[visited])  # inf while the heap is not full
        if not bool(open_rows.all()):
            active, q_active, worst, top_active = active[open_rows], q_active[open_rows], worst[open_rows], top_active[open_rows]
            low_active = low_active[open_rows]
            if active.numel() == 0:
                break
        reach = float(worst.max()) ** 0.5
        # the next leaves up to ``width`` points, while their bound is within reach (at least one)
        within_width = int(np.searchsorted(covered, covered[visited] + width, side="right")) - 1
        within_reach = int(np.searchsorted(bound_np, reach, side="right"))
        stop = max(visited + 1, min(within_width, within_reach))
        chunk = leaves[visited:stop]
        # only the queries that the chunk can reach, each by its own bound (its principal
        # coordinates against the box of the chunk's leaves): the group's shared bound lets a leaf
        # in for all of them once it is near any
        chunk_lo, chunk_hi = index.box_lo[chunk].min(0).values, index.box_hi[chunk].max(0).values  # the chunk's box
        reachable = box_gap(top_active, top_active, chunk_lo, chunk_hi) - slack <= worst.sqrt()
        positions = index.positions(chunk)
        if bool(reachable.any()):
            every = bool(reachable.all())
            rows_here = active if every else active[reachable]
            col_ids, col_global = index.order[positions], index.norms[positions]
            q_here = q_active if every else q_active[reachable]
            if use_bound and bool(torch.isfinite(worst).all()):
                # heaps full: the principal coordinates first (a lower bound), exact tests for what it leaves;
                # each row skips the chunk's leaves whose box is beyond its own reach (the chunk's
                # box above is the group's: at 10^5 x 2x10^5, k = 22, 76% of the pairs it let
                # through lay in leaves beyond their row's reach)
                # the chunk's leaf offsets are the visit's running point counts, from the chunk's start
                gate = (torch.from_numpy(covered[visited : stop + 1] - covered[visited]), index.box_lo[chunk],
                        index.box_hi[chunk], top_active if every else top_active[reachable])
                done, tests = search.bound_tile(rows_here, low_active if every else low_active[reachable], centre_low32,
                                                index.top[positions], col_ids, col_global,
                                                worst if every else worst[reachable], slack, gate=gate)
                search.bound_pairs += done * positions.numel()
                search.bound_tests += tests
                if done < rows_here.numel():
                    use_bound = False  # the bound leaves too much here: full tiles for the rest of the group
                    rows_here, q_here = rows_here[done:], q_here[done:]
                else:
                    rows_here = rows_here[:0]
            if rows_here.numel():
                search.tile(rows_here, q_here, centre, index.gather(positions), col_ids, col_global)
                search.pairs += rows_here.numel() * positions.numel()
        visited = stop
        width = min(2 * width, search.block)
    return visited / leaves.numel()


def _indexed_search(search: _Search, refs: torch.Tensor) -> None:
    native = search.epilogue_class is _CppKnn  # the C++ tree build with the C++ epilogue
    # read in place: the search's full tiles are few (the first chunks), and a frame copy of 10^6
    # references is 0.5 GB (excess ICDS's union of 2x10^6, 1 GB)
    index = build_index(refs, leaf_size=LEAF_SIZE, frame=fit_frame(refs, also=search.queries), native=native,
                        workers=search.workers, copy=False)
    search.start(index.frame)
    # the stored queries are rounded like the stored references: the slack of both
    search.slack = max(index.slack, 6.0 * index.frame.roundoff * float(search.q_global.max()) + 1e-300)
    top = principal_coordinates(index.frame, search.queries, search.workers)
    groups = _query_groups(top, native=native)
    search.centre_top = index.frame.project(index.centre)  # [leaves, p] float64
    pilot, rest = groups[:PILOT_GROUPS], groups[PILOT_GROUPS:]
    shares = []
    run_parallel(lambda rows: shares.append(_pruned_group(search, index, rows, top)), pilot, search.workers)
    search.leaves_visited = float(np.mean(shares))
    search.strategy = "pruned"
    if not rest:
        return
    if search.leaves_visited > BRUTE_FRACTION:
        # pruning does not pay here: every remaining query against the index's points in storage order
        search.strategy = "pilot, then brute"
        search.brute(torch.cat(rest), refs)
    else:
        run_parallel(lambda rows: _pruned_group(search, index, rows, top), rest, search.workers)


@torch.no_grad()
def _knn_tiles(queries: torch.Tensor, references: torch.Tensor, k: int, block: int, epilogue_class, keep: Optional[list] = None):
    """(exact squared distances [q, k] float64 of the originals times ``scale``, ids [q, k] int64,
    scale), rows in any order; ``scale`` is the exact test's power of two (1 unless the values
    could overflow a square)."""
    dtype = _work_dtype(queries, references)
    device = queries.device
    q = queries.detach().to(device, dtype).contiguous()
    r = references.detach().to(device, dtype).contiguous()
    with worker_threads() as threads:
        search = _Search(q, r, k, block, epilogue_class, threads if device.type == "cpu" else 1)
        if q.shape[0] >= INDEX_MIN_QUERIES and r.shape[0] >= INDEX_MIN_REFS:
            _indexed_search(search, r)
        else:
            _brute_search(search, r)
    if keep is not None:
        keep.append(search)
    return search.best, search.best_index, search.frame.exact_scale


def search_stats(queries, references, k: int, block_refs: int = 8192, backend: Optional[str] = None) -> dict:
    """How the tiled search of ``knn_distance(queries, references, k)`` went (the direct search for
    few queries aside): strategy ("brute", "pruned", "pilot, then brute"), GEMM pairs computed,
    their share of q x m, the share of leaves the pilot query groups visited, and the pairs of
    lower-bound tiles with the exact tests they left. For benchmarks."""
    q, r = _checked_pair(queries, references)
    name, _ = dispatch.resolve("knn_distance", q.device, backend)
    kept: list = []
    _knn_tiles(q, r, k, block_refs, _CppKnn if name == "cpp" else _TorchKnn, keep=kept)
    search = kept[0]
    return {"strategy": search.strategy, "pairs": search.pairs, "pair_share": search.pairs / (q.shape[0] * r.shape[0]),
            "leaves_visited": search.leaves_visited, "bound_pairs": search.bound_pairs, "bound_tests": search.bound_tests}


def _knn_reference(queries, references, k, block_queries, block_refs):
    return _knn_tiles(queries, references, k, block_refs, _TorchKnn)


def _knn_device(queries, references, k, block_queries, block_refs):
    """CUDA (or the interpreter's CPU tensors): k = 1 by the two-pass Triton search
    (``inform_fast.kernels.min_distance``), else the PyTorch tiles on the queries' device."""
    if k > 1:
        return _knn_tiles(queries, references, k, block_refs, _TorchKnn)
    from inform_fast.kernels.min_distance import nearest_exact

    scale = exact_scale_for(max(max_abs(queries), max_abs(references)))
    d2, index = nearest_exact(queries.detach(), references.detach(), scale)
    return d2[:, None], index[:, None], scale


def _knn_cpp(queries, references, k, block_queries, block_refs):
    from inform_fast import _native

    if queries.shape[0] > CPP_MAX_QUERIES:
        return _knn_tiles(queries, references, k, block_refs, _CppKnn)
    dtype = _work_dtype(queries, references)
    q = queries.detach().to("cpu", dtype).contiguous()
    r = references.detach().to("cpu", dtype).contiguous()
    scale = exact_scale_for(max(max_abs(q), max_abs(r)))  # 1 unless the squares could overflow
    with worker_threads() as threads:
        d2, index = _native.module().knn_exact(q.numpy(), r.numpy(), k, scale, threads)
    return torch.from_numpy(d2), torch.from_numpy(index), scale


# --- public API -------------------------------------------------------------------------------


def _checked_pair(queries, references):
    q = as_latents("queries", queries)
    r = as_latents("references", references, dim=q.shape[1])
    if q.device != r.device:
        raise ValueError(f"references: on {r.device}, but queries are on {q.device}")
    return q, r


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
        block_queries: accepted for compatibility (the query blocks are fixed); block_refs:
            reference columns per tile (memory O(QUERY_BLOCK * block_refs) per worker).
        backend: None/"auto" or a forced backend (see ``inform_fast.dispatch``).

    Returns:
        (distances [q, k], indices [q, k]): distances float32 (float64 if either input is
        float64), exact (see the module docstring) and ascending, ties by reference index;
        indices int64 into ``references``. ``distances[:, -1]`` is the k-th nearest distance.
    """
    q, r = _checked_pair(queries, references)
    check_positive_int("k", k)
    if k > r.shape[0]:
        raise ValueError(f"k: {k} neighbours requested but references has only {r.shape[0]} rows")
    check_positive_int("block_queries", block_queries)
    check_positive_int("block_refs", block_refs)
    return knn_distance_checked(q, r, k, block_queries, block_refs, backend)


def _finish(d2: torch.Tensor, index: torch.Tensor, out_dtype: torch.dtype, scale: float = 1.0, native: bool = False):
    """Sort rows by (distance, id) and take square roots. ``native``: sorted in place by the C++
    extension (``_C.knn_sort_rows``; the arrays are the search's own): the two stable argsorts
    below took 1.5 s of excess ICDS's 25 s at 5x10^5 latents, with rows of 22."""
    from inform_fast import _native

    if (native and d2.device.type == "cpu" and d2.dtype == torch.float64 and d2.is_contiguous() and index.is_contiguous()
            and _native.available()):
        _native.module().knn_sort_rows(d2.numpy(), index.numpy(), torch.get_num_threads())
    else:
        by_id = torch.argsort(index, dim=1, stable=True)
        d2, index = d2.gather(1, by_id), index.gather(1, by_id)
        by_distance = torch.argsort(d2, dim=1, stable=True)
        d2, index = d2.gather(1, by_distance), index.gather(1, by_distance)
    return (d2.sqrt() / scale).to(out_dtype), index


def _knn_distance_op(q: torch.Tensor, r: torch.Tensor, k: int, block_queries: int, block_refs: int,
                     backend: Optional[str], op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [q, k], indices [q, k] int64) of validated inputs, through the backend of
    ``inform_fast.dispatch`` op ``op`` ("knn_distance", or "nearest_distance" for k = 1)."""
    name, impl = dispatch.resolve(op, q.device, backend)
    d2, index, scale = impl(q, r, k, block_queries, block_refs)
    return _finish(d2.to(q.device), index.to(q.device), _work_dtype(q, r), scale, native=name == "cpp")


def _knn_distance_fake(q, r, k, block_queries, block_refs, backend, op):
    return q.new_empty((q.shape[0], k), dtype=_work_dtype(q, r)), q.new_empty((q.shape[0], k), dtype=torch.int64)


define_op("knn_distance", "(Tensor q, Tensor r, int k, int block_queries, int block_refs, str? backend, str op) -> (Tensor, Tensor)",
          _knn_distance_op, _knn_distance_fake)


def knn_distance_checked(
    q: torch.Tensor, r: torch.Tensor, k: int, block_queries: int = 1024, block_refs: int = 8192, backend: Optional[str] = None,
    op: str = "knn_distance",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_distance`` on arguments already validated by the caller, through the registered op
    ``torch.ops.inform_fast.knn_distance`` (so ``torch.compile`` sees one op)."""
    return torch.ops.inform_fast.knn_distance(q.detach(), r.detach(), int(k), int(block_queries), int(block_refs), backend, op)


def nearest_distance(
    queries,
    references,
    block_queries: int = 1024,
    block_refs: int = 8192,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query to its nearest reference: ``knn_distance`` with k = 1.

    Args:
        queries: [q, L] float tensor or array (float16/bfloat16/float32/float64).
        references: [m, L], same L, same device as ``queries``.
        block_queries, block_refs: see ``knn_distance``.
        backend: None/"auto", "reference", "triton" or "cpp" (see the module docstring).

    Returns:
        (distances [q], indices [q]): distances float32 (float64 if either input is float64),
        exact; indices int64 into references (the smallest index among exact ties).
    """
    q, r = _checked_pair(queries, references)
    check_positive_int("block_queries", block_queries)
    check_positive_int("block_refs", block_refs)
    return nearest_distance_checked(q, r, block_queries, block_refs, backend)


def nearest_distance_checked(
    q: torch.Tensor, r: torch.Tensor, block_queries: int = 1024, block_refs: int = 8192, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nearest_distance`` on arguments already validated by the caller (no second pass)."""
    distance, index = knn_distance_checked(q, r, 1, block_queries, block_refs, backend, op="nearest_distance")
    return distance[:, 0], index[:, 0]
