"""Exact geometry for the pair searches (DBSCAN, k nearest references): a well-conditioned frame,
a k-d tree of leaves with lower bounds, and the error band of a float32 GEMM tile.

Why: distances computed as ``||a||^2 + ||b||^2 - 2 a.b`` with a GEMM lose everything to
cancellation when the points are far from the origin compared with their distance (8,000 points
0.9 apart on a line far from the origin gave 353 DBSCAN clusters instead of one), and overflow
float32 at magnitudes of 1e20. Three measures make every search here exact:

1. **Frame.** The points are centred (float64 mean), scaled by a power of two (exact) so that
   every coordinate is at most 1, and rotated onto their principal axes (float64, then rounded
   once to float32): ``y = ((x - mean) * scale) @ rotation``. Distances are those of ``x`` times
   ``scale``; the rotation only orders the axes by variance, which the tree uses.
2. **Local centring.** Each tile subtracts the centre of its row group from both sides before
   the GEMM, so the cancellation is relative to the size of the group and its reach, not to the
   distance from the origin.
3. **Error band.** For float32 points ``a``, ``b`` (local norms ``|a|``, ``|b|``; global norms
   ``g_a``, ``g_b`` in the frame) the GEMM value of ``|a - b|^2`` is within
   ``band = c1 (|a| + |b|)^2 + c2 (|a| + |b|)(g_a + g_b)`` of the exact squared distance: ``c1``
   covers the dot product and the norms (``gamma_D`` each, plus the final sums), ``c2`` the
   rounding of the frame's coordinates (float32 storage and the float64 rotation). Pairs whose
   value lies within the band of the threshold are decided by the exact test: the float64 sum of
   squared differences of the caller's original values, as scikit-learn's tree searches compute
   it, so ``dist <= eps`` is a neighbour exactly as in scikit-learn.

If float32 cannot resolve the radius at all (``eps`` below ~1e-4 of the data's extent in float32
units), the frame is float64 and the same band uses float64's unit roundoff.

The tree: median splits along the widest of the top ``TREE_DIMS`` principal coordinates, down to
leaves of at most ``leaf_size`` points, each leaf a run of consecutive positions (``LeafIndex.order``
maps a position to its row of the indexed array). A tile's rows come from ``LeafIndex.gather``:
from a frame copy of the points in leaf order where the index keeps one (DBSCAN's reference and
Triton backends, whose tiles re-read their columns), else read from the indexed array in place and
mapped through the frame (the k-NN searches: no second copy of the references; DBSCAN's C++ panel
kernel, which packs each tile's columns from it). Each leaf keeps its box in those
coordinates, the range of the norm of its remaining coordinates, and its bounding ball; two leaves can hold a pair within ``r`` only if
``max(sqrt(box_gap^2 + tail_gap^2), centre_distance - radius_a - radius_b) <= r`` (an orthogonal
projection never lengthens a vector, and ``|u - v| >= ||u| - |v||``). On latents whose variance
lives in a few directions this prunes almost every pair; on isotropic high-dimensional data it
prunes none, and the searches cost what tiled brute force costs.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

MAX_TREE_DIMS = 8  # at most this many principal coordinates for the k-d tree
FILTER_DIMS = 16  # principal coordinates kept for the point-level lower-bound tiles
PCA_SAMPLE = 1 << 14  # rows (evenly strided) the principal axes are estimated from
FLOAT32_ROUNDOFF = 2.0**-24
FLOAT64_ROUNDOFF = 2.0**-53
# |x| above this is scaled (by a power of two) before the exact test squares it in float64
_EXACT_SCALE_LIMIT = 2.0**480


@dataclass
class Frame:
    """The map ``x -> (x - mean) * scale`` (stored in ``dtype``) and the principal axes.

    mean: [D] float64.  axes: [D, p] float64, orthonormal principal axes by decreasing variance
    (p <= FILTER_DIMS).  scale: a power of two.  exact_scale: the power of two the exact test
    multiplies the original values by (1 unless they could overflow a float64 square).
    dtype: torch.float32, or torch.float64 when float32 cannot resolve the search radius.
    """

    mean: torch.Tensor
    axes: torch.Tensor
    scale: float
    exact_scale: float
    dtype: torch.dtype

    @property
    def roundoff(self) -> float:
        return FLOAT32_ROUNDOFF if self.dtype == torch.float32 else FLOAT64_ROUNDOFF

    def apply(self, x: torch.Tensor, rows: Optional[int] = None, out: Optional[torch.Tensor] = None,
              workers: int = 1) -> torch.Tensor:
        """[n, D] ``(x - mean) * scale`` in ``dtype``, each value rounded once: float32 input into a
        float32 frame is shifted in float32 (the mean is a float32 value, and a correctly rounded
        difference is all the band assumes), anything else in float64. Written into ``out`` where
        given ([n, D], ``dtype``); temporaries are ``rows``-row chunks (the scale is a power of
        two, so scaling in place rounds nothing; ``chunk_rows`` by default), on ``workers`` threads
        (``run_parallel``)."""
        rows = rows or chunk_rows(x.device)
        if out is None:
            out = torch.empty(x.shape, dtype=self.dtype, device=x.device)
        work = torch.float32 if (x.dtype == torch.float32 and self.dtype == torch.float32) else torch.float64
        mean = self.mean.to(x.device, work)

        def chunk(a: int) -> None:
            target = out[a : a + rows]
            if work == self.dtype:
                torch.sub(x[a : a + rows].to(work), mean, out=target).mul_(self.scale)
            else:
                target.copy_((x[a : a + rows].to(work) - mean).mul_(self.scale))

        run_parallel(chunk, range(0, x.shape[0], rows), workers)
        return out

    def project(self, y: torch.Tensor, rows: Optional[int] = None, workers: int = 1) -> torch.Tensor:
        """[n, p] float64 principal coordinates of frame points ``y`` (exact products of the
        stored values, so the only error is float64's), in ``rows``-row chunks (``chunk_rows`` by
        default) on ``workers`` threads."""
        rows = rows or chunk_rows(y.device)
        axes = self.axes.to(y.device)
        out = torch.empty((y.shape[0], axes.shape[1]), dtype=torch.float64, device=y.device)

        def chunk(a: int) -> None:
            torch.mm(y[a : a + rows].to(torch.float64), axes, out=out[a : a + rows])

        run_parallel(chunk, range(0, y.shape[0], rows), workers)
        return out

    def band_coefficients(self, dim: int) -> tuple[float, float]:
        """(c1, c2) of the module docstring's band, with a factor 2 of safety."""
        u = self.roundoff
        c1 = dot_band_coefficient(dim, u)
        # coordinates: float32 (or float64) storage of frame values computed in float64
        c2 = 2.0 * (4.0 * u + 4.0 * FLOAT64_ROUNDOFF)
        return c1, c2


def mapped_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """[numel] uninitialised CPU tensor of ``dtype`` in pages mapped for it alone (anonymous mmap):
    a page costs memory only once written, and all of them go back to the system with the tensor.
    For the scratch buffers the CPU workers keep: from malloc, a worker thread's buffer stays in
    that thread's arena after it is freed (once anything in the process has freed a large block,
    glibc serves blocks up to 32 MB from the arenas and trims them only past 64 MB free), so every
    worker thread a pass starts kept its own copy: at 32,000 points DBSCAN's RSS grew by twice its
    live heap."""
    pages = mmap.mmap(-1, max(1, numel * dtype.itemsize), flags=mmap.MAP_PRIVATE)  # private: counted as the process's anonymous memory
    return torch.frombuffer(pages, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def chunk_rows(device: torch.device) -> int:
    """Rows per chunk of the whole-set passes (frame copies, principal coordinates, the index's
    norms): on the CPU small chunks keep the temporaries a fraction of the index (at 32,000 points
    chunks of 2^14 rows made the heap's peak twice the index, and with 2^12 the worker threads' malloc
    arenas kept ~40 MB of freed chunk temporaries: DBSCAN's RSS growth on noise + clusters
    ~100 -> ~75-80 MB with 2^10); on a GPU each chunk is a few kernel
    launches, so chunks stay large (10^7 references in 2^12-row chunks would be ~7,000 launches)."""
    return 1 << 10 if device.type == "cpu" else 1 << 16


def dot_band_coefficient(dim: int, roundoff: float) -> float:
    """c1 of the module docstring's band: the GEMM value of |a - b|^2 (dot product and norms over
    ``dim`` coordinates, then the sums) is within c1 (|a| + |b|)^2 of the exact one, with a factor
    2 of safety, in a precision of unit ``roundoff``."""
    return 2.0 * (dim + 8) * roundoff


def distance_floor(a: torch.Tensor, b: torch.Tensor, b_sqnorm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[A, B] float64 lower bounds of the distances between the rows of ``a`` [A, D] and ``b`` [B, D]
    (float64; ``b_sqnorm``: b's squared norms where known): the GEMM form |a|^2 + |b|^2 - 2 a.b
    less its rounding (``dot_band_coefficient`` (max |a| + max |b|)^2), so a pruning test on it
    never overstates a distance. One [A, B] matrix and no copies of the sets (torch.cdist's GEMM
    path pads both into new [*, D + 2] matrices: 2.5 MB per call of DBSCAN's component join at
    1,280 components, a fifth of its heap)."""
    a_sq = (a * a).sum(1)
    b_sq = (b * b).sum(1) if b_sqnorm is None else b_sqnorm
    if a.shape[0] == 0 or b.shape[0] == 0:
        return a.new_zeros((a.shape[0], b.shape[0]))
    error = dot_band_coefficient(a.shape[1], FLOAT64_ROUNDOFF) * (float(a_sq.max()) ** 0.5 + float(b_sq.max()) ** 0.5) ** 2
    d2 = cross_products(a, b).mul_(-2.0).add_(b_sq[None, :]).add_(a_sq[:, None])
    return d2.sub_(error).clamp_min_(0.0).sqrt_()


def cross_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[A, B] a @ b.T (a [A, D], b [B, D], one dtype): on the CPU through NumPy's BLAS, the one the
    frame's covariance already uses (``fit_frame``), not torch's MKL, whose first product in a
    thread allocates ~5 MB of workspace that stays with the process: at 32,000 points the component
    join's first float64 product was that much of DBSCAN's memory, in one run of four."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy().T))
    return a @ b.T


def _power_of_two_above(value: float) -> float:
    """A power of two >= value (value > 0; at most 2 value)."""
    return math.ldexp(1.0, math.frexp(value)[1])


def exact_scale_for(largest: float) -> float:
    """The power of two the exact test multiplies values by: 1 unless ``largest`` (the largest
    absolute value) could overflow a float64 sum of squares."""
    return 1.0 if largest < _EXACT_SCALE_LIMIT else 1.0 / _power_of_two_above(largest)


def max_abs(x: torch.Tensor, rows: int = 1 << 16) -> float:
    worst = 0.0
    for a in range(0, x.shape[0], rows):
        low, high = torch.aminmax(x[a : a + rows])
        worst = max(worst, abs(float(low)), abs(float(high)))
    return worst


def column_range(x: torch.Tensor, rows: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """([D], [D]) smallest and largest value of each column, in x's dtype (amin and amax apart:
    torch's aminmax along a dimension was 10x slower on the CPU)."""
    lo, hi = x[:rows].amin(0), x[:rows].amax(0)
    for a in range(rows, x.shape[0], rows):
        chunk = x[a : a + rows]
        lo, hi = torch.minimum(lo, chunk.amin(0)), torch.maximum(hi, chunk.amax(0))
    return lo, hi


def _centred_extent(column_lo: torch.Tensor, column_hi: torch.Tensor, mean: torch.Tensor, pre: float) -> float:
    """max |x - mean| over all elements of x (of x * pre, a power of two, then undone; in x's
    precision, float32 at least: only a power of two above it is needed), from x's column ranges:
    rounding is monotone, so the largest rounded difference in a column is that of its extreme."""
    work = torch.float64 if column_lo.dtype == torch.float64 else torch.float32
    shifted = (mean * pre).to(column_lo.device, work)
    lo, hi = column_lo.to(work), column_hi.to(work)
    if pre != 1.0:
        lo, hi = lo * pre, hi * pre
    worst = max(0.0, float((hi - shifted).max()), float((shifted - lo).max()))
    return worst / pre


@contextlib.contextmanager
def worker_threads():
    """Inside: torch single-threaded; yields how many threads it had, the number of workers the
    CPU passes then run (``run_parallel``). One worker per tile, each tile single-threaded, means no
    operation waits at a barrier for a thread the OS has descheduled; on a busy 2-core machine the
    per-operation parallel regions of the same passes made them 10-20x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def run_parallel(fn, items, workers: int) -> None:
    """fn(item) for every item, on the process's pool of ``workers`` threads (``_pool``: kept from
    pass to pass; the heavy parts release the GIL), inline where there is one worker or one item or
    the caller is a pool thread itself. Items must touch disjoint state (each writes its own rows)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1 or getattr(_IN_POOL, "value", False):
        for item in items:  # a pass inside a worker runs inline: a nested wait on the pool could deadlock it
            fn(item)
        return
    futures = [_pool(workers).submit(fn, item) for item in items]
    try:
        for future in futures:
            future.result()  # re-raises a worker's exception
    except BaseException:
        # no item of this pass may still be writing once the caller sees the error
        for future in futures:
            future.cancel()
        wait(futures)
        raise


_IN_POOL = threading.local()
_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _mark_pool_thread(slots) -> None:
    _IN_POOL.value = True
    _IN_POOL.slot = next(slots)


def worker_slot() -> int:
    """This thread's index in its ``run_parallel`` pool (0 .. workers - 1), 0 outside the pools. A
    pass's caller waits while the pool runs its items, so the caller's work (slot 0) never overlaps
    the items of the same pass: per-slot scratch serves both."""
    return getattr(_IN_POOL, "slot", 0)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads for ``run_parallel``, kept between passes and
    calls (as torch keeps its intra-op threads): a pool per pass started new threads each time,
    and glibc gave each its arena, so freed temporaries piled up in arenas a later pass's threads
    did not reuse (4 arenas grew by 17 MB at 32,000 small clusters, against a 14 MB heap). Keyed by
    process id too: a forked child has none of its parent's threads."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            for other in [k for k in _POOLS if k[0] != key[0]]:
                del _POOLS[other]  # a parent's pool: its threads do not exist here
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inform_fast",
                                                    initializer=_mark_pool_thread, initargs=(itertools.count(),))
    return pool


@contextlib.contextmanager
def single_thread():
    """torch on one thread inside the block (small problems: thread synchronisation dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def column_mean(x: torch.Tensor, rows: int = 1 << 16) -> torch.Tensor:
    """[D] float64 mean of x's rows: chunk sums in x's precision (float32 sums are cascaded, so
    accurate to a few ulps), accumulated in float64 (a centre close to the mean is all any frame
    needs; converting every element to float64 first costs 10x more)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], rows):
        total += x[a : a + rows].sum(0, dtype=acc).to(torch.float64)
    return total / x.shape[0]


def fit_frame(x: torch.Tensor, radius: Optional[float] = None, filter_dims: int = FILTER_DIMS,
              also: Optional[torch.Tensor] = None, axes: bool = True) -> Frame:
    """The frame of ``x`` [n, D] (see ``Frame``); ``radius``: the search radius in x's units, which
    decides whether float32 can resolve it; ``also``: another set (queries) the frame must hold
    without overflow; ``axes=False`` skips the principal axes (identity)."""
    ranges = [column_range(t) for t in (x, also) if t is not None and t.shape[0] and t.shape[1]]
    big = max((max(abs(float(lo.min())), abs(float(hi.max()))) for lo, hi in ranges), default=0.0)
    # centred on a scaled copy where the values could overflow a sum or a difference
    pre = 1.0 / _power_of_two_above(big) if big > 2.0**960 else 1.0
    mean = column_mean(x * pre if pre != 1.0 else x) / pre
    if x.dtype != torch.float64:
        mean = mean.to(torch.float32).to(torch.float64)  # a float32 shift: float32 input is centred in float32
    extent = max((_centred_extent(lo, hi, mean, pre) for lo, hi in ranges), default=0.0)
    extent *= 1.0 + 1e-6  # bounds |x - mean| elementwise
    scale = 1.0 / _power_of_two_above(extent) if extent > 0 else 1.0
    exact_scale = exact_scale_for(big)
    dtype = torch.float32
    # In the frame every coordinate is <= 1, so global norms are <= sqrt(D) and the band's linear
    # term, relative to eps^2 for a pair near the threshold (|a| + |b| ~ eps), is about
    # 8 u 2 sqrt(D) / eps: below eps ~ 200 u sqrt(D) (~1e-4) float32 would leave every pair to
    # the exact test, so the frame is float64 instead.
    if radius is not None and radius * scale < 200.0 * FLOAT32_ROUNDOFF * math.sqrt(x.shape[1]):
        dtype = torch.float64
    if axes and x.shape[0] > 1 and x.shape[1] > 1:
        # the axes only steer the tree and the lower-bound tiles (any orthonormal axes keep them
        # exact), so a float32 covariance of a strided sample serves, summed over row chunks (the
        # whole sample in float64 was 34 MB at 32,000 x 128: the largest allocation of a DBSCAN)
        step = max(1, x.shape[0] // PCA_SAMPLE)
        sample = x[::step][:PCA_SAMPLE]
        if x.device.type == "cpu":
            # NumPy's BLAS and LAPACK on the CPU: torch's (MKL) allocate per-thread workspaces on
            # first use that stay with the process (~5 MB of a DBSCAN at 32,000 points for a D x D
            # problem); NumPy's grew it by ~1 MB
            sample_np = sample.numpy() if sample.dtype in (torch.float32, torch.float64) else sample.to(torch.float64).numpy()
            mean_np = mean.numpy()
            covariance_np = np.zeros((x.shape[1], x.shape[1]))
            for a in range(0, sample_np.shape[0], 1 << 9):
                part = ((sample_np[a : a + (1 << 9)].astype(np.float64) - mean_np) * scale).astype(np.float32)
                covariance_np += (part.T @ part).astype(np.float64)
            _, vectors_np = np.linalg.eigh(covariance_np)  # ascending eigenvalues
            vectors = torch.from_numpy(np.ascontiguousarray(vectors_np))
        else:
            covariance = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64, device=x.device)
            for a in range(0, sample.shape[0], 1 << 9):
                part = ((sample[a : a + (1 << 9)].to(torch.float64) - mean.to(x.device)) * scale).to(torch.float32)
                covariance += (part.T @ part).to(torch.float64)
            with single_thread():  # a D x D problem: threads only wait for each other (60x slower on a busy machine)
                _, vectors = torch.linalg.eigh(covariance.cpu())  # ascending eigenvalues
        axes = vectors.flip(1)[:, : min(filter_dims, x.shape[1])].contiguous()
    else:
        axes = torch.eye(x.shape[1], dtype=torch.float64)[:, : min(filter_dims, x.shape[1])]
    return Frame(mean=mean.cpu(), axes=axes, scale=scale, exact_scale=exact_scale, dtype=dtype)


@dataclass
class LeafIndex:
    """Points in a frame, in k-d tree leaf order, with per-leaf bounds (see the module docstring).

    source: [n, D] the indexed array itself, as given (rows in their original order).
    points: None, or [n, D] frame dtype: the points in the frame in leaf order (``build_index``'s
    ``copy``), which ``gather`` then reads instead of mapping rows of ``source``.
    top: [n, p] frame dtype, the principal coordinates of each position (the lower-bound tiles).
    order: [n] int64, original row of each position.
    starts: [n_leaves + 1] int64 (leaf l holds positions starts[l]:starts[l+1]).
    norms: [n] float64, upper bounds of |points| (global norms in the frame).  sqnorm: [n] frame
    dtype, the squared norms of the stored frame points.  box_lo / box_hi: [n_leaves, k] float64
    in the top-k principal coordinates.  centre: [n_leaves, D] float64.  radius: [n_leaves]
    float64, an upper bound of the leaf's distance from its centre.
    slack: float64, by how much a distance between stored points can exceed the true one (the
    stored coordinates are rounded); every bound here is lowered by it.
    """

    frame: Frame
    source: torch.Tensor
    top: torch.Tensor
    order: torch.Tensor
    starts: torch.Tensor
    norms: torch.Tensor
    sqnorm: torch.Tensor
    box_lo: torch.Tensor
    box_hi: torch.Tensor
    centre: torch.Tensor
    radius: torch.Tensor
    slack: float
    native: bool = False  # ``gather`` through the C++ extension (float32 on the CPU)
    points: Optional[torch.Tensor] = None  # [n, D] frame dtype, leaf order: a frame copy, where built

    @property
    def n_leaves(self) -> int:
        return self.starts.numel() - 1

    @property
    def n(self) -> int:
        return self.source.shape[0]

    @property
    def dim(self) -> int:
        return self.source.shape[1]

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def dtype(self) -> torch.dtype:
        """The frame's dtype: that of ``gather``'s rows."""
        return self.frame.dtype

    @property
    def leaf_sizes(self) -> torch.Tensor:
        return self.starts[1:] - self.starts[:-1]

    def gather(self, positions: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[len(positions), D] frame dtype: the frame coordinates of the points at ``positions``
        (``points``' rows, or rows of ``source`` mapped through the frame: ``frame_rows``).
        ``out``: where to write them."""
        if self.points is not None:
            return self.points.index_select(0, positions) if out is None else torch.index_select(self.points, 0, positions, out=out)
        return frame_rows(self.frame, self.source, self.order[positions], self.native, out=out)

    def gather_run(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, D] frame dtype: the points at positions start:stop (a view of ``points``
        where the index keeps them, else mapped from ``source``)."""
        if self.points is not None:
            return self.points[start:stop]
        return frame_rows(self.frame, self.source, self.order[start:stop], self.native)

    def frame_points(self, workers: int = 1) -> torch.Tensor:
        """[n, D] frame dtype: every point in the frame, in leaf order (``points``, or a copy, for the
        kernels that address all of them by position: the Triton tiles, and ``build_index``'s
        ``copy``), in ``chunk_rows`` chunks on ``workers`` threads."""
        if self.points is not None:
            return self.points
        out = torch.empty((self.n, self.dim), dtype=self.dtype, device=self.device)
        rows = chunk_rows(self.device)
        run_parallel(lambda a: frame_rows(self.frame, self.source, self.order[a : a + rows], self.native,
                                          out=out[a : a + rows]), range(0, self.n, rows), workers)
        return out

    def leaf_of_position(self) -> torch.Tensor:
        """[n] int64: the leaf of each position."""
        return torch.repeat_interleave(torch.arange(self.n_leaves, device=self.starts.device), self.leaf_sizes)

    def positions(self, leaves) -> torch.Tensor:
        """Positions [sum of sizes] int64 of the given leaves, in the given order."""
        leaves = torch.as_tensor(leaves, dtype=torch.int64, device=self.starts.device)
        sizes = self.leaf_sizes[leaves]
        offsets = torch.repeat_interleave(self.starts[leaves] - torch.cumsum(sizes, 0) + sizes, sizes)
        return offsets + torch.arange(offsets.numel(), device=offsets.device)


def _native_rows(x: torch.Tensor, native: bool) -> bool:
    """Whether the C++ extension's passes over whole rows serve ``x``."""
    if not (native and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()):
        return False
    from inform_fast import _native

    return _native.available()


def principal_coordinates(frame: Frame, x: torch.Tensor, workers: int = 1, native: bool = False,
                          axes: Optional[int] = None, ids: Optional[torch.Tensor] = None,
                          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[n, p] principal coordinates (in ``dtype``, summed in float64) of the rows of ``x`` [n, D]
    in ``frame`` (``frame.project(frame.apply(x))``): the first ``axes`` of them (all by default),
    of the rows ``ids`` in that order (all by default). In ``chunk_rows`` chunks on ``workers``
    threads: no frame copy of all of x. ``native``: in one pass of the C++ extension for
    float32/float64 rows on the CPU (``_C.principal_coordinates``: the same products summed in
    another order; no chunk copies and no BLAS workspaces, which grew DBSCAN's process by ~16 MB
    at 32,000 x 128)."""
    p = frame.axes.shape[1] if axes is None else axes
    n = x.shape[0] if ids is None else ids.numel()
    top = torch.empty((n, p), dtype=dtype, device=x.device)
    if _native_rows(x, native):
        from inform_fast import _native

        _native.module().principal_coordinates(x.numpy(), frame.mean.to(x.dtype).numpy(), frame.scale,
                                               frame.dtype == torch.float32, frame.axes[:, :p].contiguous().numpy(),
                                               top.numpy(), threads=max(1, int(workers)),
                                               ids=None if ids is None else ids.contiguous().numpy())
        return top
    rows = chunk_rows(x.device)
    frame_axes = Frame(frame.mean, frame.axes[:, :p], frame.scale, frame.exact_scale, frame.dtype)

    def chunk(a: int) -> None:
        part = x[a : a + rows] if ids is None else x.index_select(0, ids[a : a + rows])
        top[a : a + rows] = frame_axes.project(frame_axes.apply(part))

    run_parallel(chunk, range(0, n, rows), workers)
    return top


def frame_rows(frame: Frame, source: torch.Tensor, ids: torch.Tensor, native: bool = False,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[len(ids), D] frame dtype: rows ``ids`` of ``source`` [n, D] mapped through ``frame``, the
    values of ``frame.apply(source[ids])`` (per element), written into ``out`` where given.
    ``native``: float32 on the CPU in one pass through the C++ extension (``_C.gather_frame``)."""
    if native and source.dtype == frame.dtype == torch.float32 and source.device.type == "cpu":
        from inform_fast import _native

        if _native.available():
            out = torch.empty((ids.numel(), source.shape[1]), dtype=frame.dtype) if out is None else out
            _native.module().gather_frame(source.numpy(), ids.contiguous().numpy(), frame.mean.to(torch.float32).numpy(),
                                          frame.scale, out.numpy())
            return out
    if source.dtype != frame.dtype:
        return frame.apply(source.index_select(0, ids), out=out)
    # the frame's own arithmetic (Frame.apply: a shift in the points' precision, then an exact
    # power-of-two scale), in place on the gathered rows instead of a second buffer
    rows = source.index_select(0, ids) if out is None else torch.index_select(source, 0, ids, out=out)
    return rows.sub_(frame.mean.to(rows.device, rows.dtype)).mul_(frame.scale)


def _kd_order(coords: np.ndarray, leaf_size: int, native: bool = False) -> tuple[np.ndarray, list[int]]:
    """Permutation of the rows of ``coords`` [n, k] into k-d leaves of <= leaf_size, and the leaf
    sizes in order. Median split along the widest coordinate (a stack, not recursion).
    ``native``: the same splits in C++ (``inform_fast._C.kd_order``, 10-20x faster; ties at a
    median may fall on the other side, which changes no search result), where it is built."""
    if native:
        from inform_fast import _native

        if _native.available():
            order, sizes = _native.module().kd_order(np.ascontiguousarray(coords, dtype=np.float32), int(leaf_size))
            return order, sizes.tolist()
    n = coords.shape[0]
    order = np.arange(n)
    leaves = []
    stack = [(0, n)]
    while stack:
        a, b = stack.pop()
        if b - a <= leaf_size:
            leaves.append((a, b - a))
            continue
        block = coords[order[a:b]]
        dim = int(np.argmax(block.max(0) - block.min(0)))
        half = (b - a) // 2
        part = np.argpartition(block[:, dim], half)
        order[a:b] = order[a:b][part]
        stack.append((a + half, b))
        stack.append((a, a + half))
    leaves.sort()
    return order, [size for _, size in leaves]


def tree_dims_for(n: int, leaf_size: int) -> int:
    """Principal coordinates the tree splits: about three halvings per coordinate, so that the
    leaves' boxes are narrow in each (a tree that splits more coordinates than it has halvings for
    leaves every box as wide as the data in most of them; measured on 32,000 latents with a 1/k
    spectrum: 2 coordinates and leaves of 64 left 16% of the pairs as candidates at eps = 0.5,
    8 coordinates and leaves of 256 left 50%)."""
    halvings = max(1.0, math.log2(max(n / leaf_size, 2.0)))
    return int(min(MAX_TREE_DIMS, max(2, round(halvings / 3))))


def build_index(x: torch.Tensor, leaf_size: int = 64, radius: Optional[float] = None, frame: Optional[Frame] = None,
                tree_dims: Optional[int] = None, native: bool = False, workers: int = 1, copy: bool = True,
                filter_dims: int = FILTER_DIMS) -> LeafIndex:
    """The leaf index of ``x`` [n, D] (any float dtype; computed on x's device, the tree built on
    the CPU from the top coordinates). ``copy``: keep the points in the frame in leaf order
    (``LeafIndex.points``: one copy of x, from which a tile's rows are read in runs); else the
    index reads ``x`` in place (``LeafIndex.gather``: rows scattered over x, each mapped through
    the frame as it is read), and the caller must not modify x while the index is in use. On 32,000
    x 128 latents with a 1/k spectrum, DBSCAN's tiles read in place cost 10-15% more time (their
    columns are read once per row block); a k-NN search reads few full tiles, and at 10^6 x 128
    the copy is 0.5 GB. ``frame``: another set's frame (queries
    against a reference index), else fitted to x with the search ``radius`` in x's units.
    ``native``: the tree built by the C++ extension where it is available (``_kd_order``).
    ``filter_dims``: principal coordinates kept per point (``top``; where ``frame`` is not given).
    ``workers``: threads for the row-chunk passes (``run_parallel``; inside ``worker_threads``,
    where torch runs one thread per operation, a serial build left the other cores idle: 18% of
    excess ICDS's time at 5x10^5 latents)."""
    frame = frame if frame is not None else fit_frame(x, radius=radius, filter_dims=filter_dims)
    n, rows = x.shape[0], chunk_rows(x.device)
    # built in row chunks, so that beside the index itself (its principal coordinates, per-leaf
    # bounds and, with ``copy``, the frame copy) only chunk-sized temporaries exist: at 10^6 x 128
    # each whole-matrix temporary is 0.5 GiB
    starts_of_chunks = range(0, n, rows)
    p = frame.axes.shape[1]
    k = min(tree_dims or tree_dims_for(x.shape[0], leaf_size), p)
    # the tree's coordinates first (float64: the boxes bound them), then all p in leaf order in the
    # frame's dtype: with the C++ extension no float64 copy of all p (4 MB at 32,000; 128 MB at 10^6)
    in_two_passes = _native_rows(x, native)
    top64 = principal_coordinates(frame, x, workers, native=native, axes=k if in_two_passes else None)
    order_np, sizes = _kd_order(top64[:, :k].to(torch.float32).cpu().numpy(), leaf_size, native=native)
    order = torch.from_numpy(order_np).to(x.device)
    device = x.device
    n_leaves = len(sizes)
    size_t = torch.tensor(sizes, dtype=torch.int64, device=device)
    starts = torch.zeros(n_leaves + 1, dtype=torch.int64, device=device)
    starts[1:] = torch.cumsum(size_t, 0)
    leaf = torch.repeat_interleave(torch.arange(n_leaves, device=device), size_t)
    f64 = dict(dtype=torch.float64, device=device)
    # the boxes from the rows in x's order (each row's leaf), and the stored coordinates in leaf
    # order: no second float64 copy of them in leaf order
    leaf_of_row = torch.empty_like(leaf)
    leaf_of_row[order] = leaf
    box_index = leaf_of_row[:, None].expand(-1, k)
    box_lo = torch.full((n_leaves, k), float("inf"), **f64).scatter_reduce_(0, box_index, top64[:, :k], reduce="amin")
    box_hi = torch.full((n_leaves, k), float("-inf"), **f64).scatter_reduce_(0, box_index, top64[:, :k], reduce="amax")
    del leaf_of_row, box_index
    if in_two_passes:
        del top64
        top = principal_coordinates(frame, x, workers, native=native, ids=order, dtype=frame.dtype)
    else:
        top = torch.empty(top64.shape, dtype=frame.dtype, device=device)
        run_parallel(lambda a: top[a : a + rows].copy_(top64.index_select(0, order[a : a + rows])), starts_of_chunks, workers)
        del top64
    index = LeafIndex(frame=frame, source=x, top=top, order=order, starts=starts,
                      norms=torch.empty(n, **f64), sqnorm=torch.empty(n, dtype=frame.dtype, device=device),
                      box_lo=box_lo, box_hi=box_hi,
                      centre=torch.empty((n_leaves, x.shape[1]), **f64) if in_two_passes else torch.zeros((n_leaves, x.shape[1]), dtype=frame.dtype, device=device),
                      radius=torch.zeros(n_leaves, **f64), slack=0.0, native=native)
    # norms, centres and radii in the points' precision: they enter bounds and bands only, so they
    # are inflated by their relative error (gamma_D) instead of computed in float64
    inflate = 1.0 + 2.0 * (x.shape[1] + 2) * frame.roundoff
    sums = {}  # per chunk: (its first leaf, the sums of its leaves' points)

    def norms_and_sums(a: int) -> None:
        chunk, chunk_leaf = index.gather_run(a, a + rows), leaf[a : a + rows]
        index.sqnorm[a : a + rows] = (chunk * chunk).sum(1)
        index.norms[a : a + rows] = index.sqnorm[a : a + rows].sqrt().to(torch.float64) * inflate
        first = int(chunk_leaf[0])
        sums[a] = (first, torch.zeros((int(chunk_leaf[-1]) - first + 1, x.shape[1]), dtype=frame.dtype,
                                      device=device).index_add_(0, chunk_leaf - first, chunk))

    if copy:
        index.points = index.frame_points(workers)
    if in_two_passes:
        # one C++ pass over the leaves, in float64: no chunk temporaries on the worker threads
        # (their freed chunks stayed in the threads' malloc arenas: 7-9 MB of DBSCAN's growth at
        # 32,000 points, whose heap peaked at 12 MB)
        from inform_fast import _native

        _native.module().leaf_statistics(x.numpy(), order.numpy(), starts.numpy(), frame.mean.to(x.dtype).numpy(), frame.scale,
                                         frame.dtype == torch.float32, inflate, index.sqnorm.numpy(), index.norms.numpy(),
                                         index.centre.numpy(), index.radius.numpy(), threads=max(1, int(workers)))
    else:
        run_parallel(norms_and_sums, starts_of_chunks, workers)
        for a in starts_of_chunks:  # in chunk order: the same sums whatever the threads' timing
            first, part = sums.pop(a)
            index.centre[first : first + part.shape[0]] += part
        index.centre /= size_t[:, None].to(frame.dtype)
        spread = torch.empty(n, **f64)

        def spreads(a: int) -> None:
            spread[a : a + rows] = (index.gather_run(a, a + rows) - index.centre[leaf[a : a + rows]]).norm(dim=1).to(torch.float64) * inflate

        run_parallel(spreads, starts_of_chunks, workers)
        index.radius.scatter_reduce_(0, leaf, spread, reduce="amax")
        index.centre = index.centre.to(torch.float64)
    # stored coordinates are within roundoff * |y| of the frame's exact values, so a distance between
    # stored points can exceed the true one by 2 roundoff max|y| (plus the centres' own rounding)
    index.slack = 6.0 * frame.roundoff * float(index.norms.max()) + 1e-300 if n else 0.0
    return index


def box_gap(lo_a, hi_a, lo_b, hi_b) -> torch.Tensor:
    """Distance between boxes (or points: lo = hi) in their coordinates, the last dimension of the
    broadcast bounds ([..., k] -> [...])."""
    gap = torch.clamp(torch.maximum(lo_b - hi_a, lo_a - hi_b), min=0)
    return gap.square_().sum(-1).sqrt_()


def _box_levels(index: LeafIndex, top_groups: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Boxes of runs of 1, 2, 4, ... consecutive leaves (level l: runs of 2^l leaves), up to a
    level with at most ``top_groups`` runs. Consecutive leaves in k-d order are neighbours in
    space, so a run's box (the union of its leaves' boxes) stays compact: a hierarchy for
    pruning pairs of runs before pairs of leaves."""
    levels = [(index.box_lo, index.box_hi)]
    while levels[-1][0].shape[0] > top_groups:
        lo, hi = levels[-1]
        if lo.shape[0] % 2:  # an odd run out: pair it with itself
            lo, hi = torch.cat([lo, lo[-1:]]), torch.cat([hi, hi[-1:]])
        levels.append((torch.minimum(lo[0::2], lo[1::2]), torch.maximum(hi[0::2], hi[1::2])))
    return levels


def _box_pairs(index: LeafIndex, radius: float, chunk_pairs: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) int64: every pair of leaves whose boxes come within ``radius`` (less the slack), by a
    descent of ``_box_levels``: the pairs of runs at each level whose boxes come within it are
    split into their children's pairs, so the work is about the number of pairs found at each
    level, not n_leaves^2 (at 10^6 points, 16,384 leaves, the all-pairs box test was half the
    clustering's time). On the CPU with the extension built, ``candidate_leaves`` runs the same
    descent in C++ (``_C.leaf_candidates``) and never calls this."""
    reach = radius + index.slack
    levels = _box_levels(index)
    top = levels[-1][0].shape[0]
    grid = torch.arange(top, device=index.box_lo.device)
    i, j = grid.repeat_interleave(top), grid.repeat(top)
    for level in range(len(levels) - 1, -1, -1):
        lo, hi = levels[level]
        n_runs = lo.shape[0]
        keep_i, keep_j = [], []
        for p in range(0, i.numel(), chunk_pairs):
            a, b = i[p : p + chunk_pairs], j[p : p + chunk_pairs]
            valid = (a < n_runs) & (b < n_runs)  # the padding of an odd level
            a, b = a[valid], b[valid]
            near = box_gap(lo[a], hi[a], lo[b], hi[b]) <= reach
            keep_i.append(a[near])
            keep_j.append(b[near])
        i, j = torch.cat(keep_i), torch.cat(keep_j)
        if level:  # each pair of runs -> the 4 pairs of their halves
            i = (2 * i[:, None] + torch.tensor([0, 0, 1, 1], device=i.device)).flatten()
            j = (2 * j[:, None] + torch.tensor([0, 1, 0, 1], device=j.device)).flatten()
    return i, j


MASK_CHUNKS = 16  # candidate_leaves: at most this many chunks select their pairs by a mask (no sort)


def candidate_leaves(index: LeafIndex, radius: float, chunk_elements: int = 1 << 20, native: bool = False,
                     workers: int = 1, chunk_pairs: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr [n_leaves + 1], indices int32) of, for each leaf, the leaves that may hold a
    point within ``radius`` (frame units) of one of its points, nearest centre first (itself
    first). The boxes (a few coordinates, by ``_box_pairs``'s descent) rule out most pairs first;
    only the pairs they leave get the ball bound (all D coordinates). Rows go in chunks of about
    ``chunk_elements / n_leaves`` leaves, each ordered on its own, so the temporaries stay near
    ``chunk_elements`` values and only the int32 lists are kept; where the pairs are up to
    MASK_CHUNKS x ``chunk_pairs``, chunks of about ``chunk_pairs`` pairs that each select theirs by a
    mask (on the 1/k spectrum at 32,000 points, 250,000 pairs in one chunk were 24 MB of
    temporaries, three quarters of DBSCAN's heap). ``native``: the whole of it in one C++ pass
(``_C.leaf_candidates``, on ``workers`` threads) for an index on the CPU where the extension is
built; the same lists."""
    n_leaves = index.n_leaves
    device = index.box_lo.device
    if n_leaves == 0:
        return torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    chunk = max(1, min(n_leaves, chunk_elements // max(1, n_leaves)))
    tolerance = 4.0 * (index.centre.shape[1] * FLOAT64_ROUNDOFF) ** 0.5 * float(index.centre.norm(dim=1).max())
    if native and device.type == "cpu":
        from inform_fast import _native

        if _native.available():
            # the same lists in one C++ pass that never holds the pairs (only their CSR): at 10^5
            # points on the 1/k spectrum the pairs and their sort below were 210 MB of a 232 MB heap
            indptr, columns = _native.module().leaf_candidates(
                index.box_lo.contiguous().numpy(), index.box_hi.contiguous().numpy(), float(radius + index.slack),
                index.centre.to(torch.float64).contiguous().numpy(), index.radius.to(torch.float64).contiguous().numpy(),
                float(index.slack + tolerance), float(radius), threads=int(workers))
            return torch.from_numpy(indptr), torch.from_numpy(columns)
    box_i, box_j = _box_pairs(index, radius)
    pairs = box_i.numel()
    by_mask = chunk_pairs < pairs <= MASK_CHUNKS * chunk_pairs
    if by_mask:
        chunk = max(1, min(chunk, n_leaves * chunk_pairs // pairs))
    if n_leaves <= chunk or by_mask:  # one chunk, or chunks that pick their pairs: no grouping by row
        row_start = None
    else:
        order = torch.argsort(box_i * n_leaves + box_j)
        box_i, box_j = box_i[order], box_j[order]
        row_start = torch.searchsorted(box_i, torch.arange(0, n_leaves + chunk, chunk, device=device).clamp(max=n_leaves)).tolist()
    counts = torch.zeros(n_leaves, dtype=torch.int64, device=device)
    col_parts = []
    for c, a in enumerate(range(0, n_leaves, chunk)):
        rows = min(a + chunk, n_leaves) - a
        if row_start is not None:
            i, j = box_i[row_start[c] : row_start[c + 1]], box_j[row_start[c] : row_start[c + 1]]
        elif by_mask:
            take = torch.nonzero((box_i >= a) & (box_i < a + rows)).flatten()
            i, j = box_i[take], box_j[take]
        else:
            i, j = box_i, box_j
        # the ball bound: one GEMM-based cdist of the chunk's leaves against the leaves its pairs
        # name (consecutive leaves are close in space, so few), less a tolerance for its float64
        # cancellation (a lower bound must not overstate); gathering both centres per pair moved
        # 2 x 128 doubles per pair through memory and cost 10x more
        columns, column_of = torch.unique(j, return_inverse=True)
        distance = torch.cdist(index.centre[a : a + rows], index.centre[columns])[i - a, column_of]
        ball = distance - index.radius[i] - index.radius[j] - index.slack - tolerance
        keep = ball <= radius
        i, j, distance = i[keep], j[keep], distance[keep]
        # by row, then itself first, then by centre distance: one sort of a combined int64 key,
        # the row above 32 bits of the distance's float32 pattern (monotone for values >= 0; the
        # distance only orders the scan, so its rounding is harmless), 0 for itself; integer keys
        # sort by radix, 6x faster than a float64 key (a quarter of this function on the 1/k spectrum)
        order_bits = distance.to(torch.float32).abs_().view(torch.int32).to(torch.int64) + 1  # abs: a -0.0 to +0.0
        key = ((i - a) << 32) | torch.where(i == j, torch.zeros_like(order_bits), order_bits)
        col_parts.append(j[torch.argsort(key)].to(torch.int32))
        counts += torch.bincount(i, minlength=n_leaves)
    indptr = torch.zeros(n_leaves + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(counts, 0)
    columns = torch.cat(col_parts) if col_parts else torch.zeros(0, dtype=torch.int32, device=device)
    return indptr.cpu(), columns.cpu()


def tile_band(frame: Frame, dim: int, row_local: torch.Tensor, col_local_max: float, row_global: torch.Tensor,
              col_global_max: float) -> torch.Tensor:
    """[R] float64 error band of the squared distances between R rows and a tile's columns (module
    docstring): local norms |a| of the rows and the largest of the columns, global norms likewise."""
    c1, c2 = frame.band_coefficients(dim)
    reach = row_local + col_local_max
    return c1 * reach * reach + c2 * reach * (row_global + col_global_max)


def bound_columns(cols_low: torch.Tensor, col_norm2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The columns of a lower-bound tile as the C++ kernel reads them (``csrc/bound_block.h``):
    coordinates [p, stride] coordinate-major and squared norms [stride], float32, the C columns
    padded with zeros to a multiple of 16 (the kernel's block; padding is never tested)."""
    cols, dim = cols_low.shape
    stride = -(-cols // 16) * 16
    cols_t = np.zeros((dim, stride), dtype=np.float32)
    cols_t[:, :cols] = cols_low.T.numpy()
    norms = np.zeros(stride, dtype=np.float32)
    norms[:cols] = col_norm2.numpy()
    return cols_t, norms


def outward(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 thresholds lo <= hi rounded outwards to ``dtype`` (lo down, hi up)."""
    lo_d, hi_d = lo.to(dtype), hi.to(dtype)
    if dtype != torch.float64:
        inf = torch.tensor(float("inf"), dtype=dtype)
        lo_d = torch.where(lo_d.to(torch.float64) > lo, torch.nextafter(lo_d, -inf), lo_d)
        hi_d = torch.where(hi_d.to(torch.float64) < hi, torch.nextafter(hi_d, inf), hi_d)
    return lo_d, hi_d


def union_roots(parent: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """Vectorised hooking (in place, parent fully compressed with parent[x] <= x): link each larger
    root under the smallest root it meets, compress, repeat until every edge is inside one
    component."""
    p = parent.numpy()
    a = a.numpy()
    b = b.numpy()
    while True:
        ra, rb = p[a], p[b]
        differ = ra != rb
        if not differ.any():
            break
        np.minimum.at(p, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p[:] = q
