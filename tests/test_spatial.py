"""inform_fast.spatial's helpers: pruning bounds, scratch memory and the worker pool."""
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from inform_fast import spatial


@pytest.mark.parametrize("shape_a, shape_b, offset", [((7, 3), (11, 3), 0.0), ((33, 128), (129, 128), 1e3), ((1, 5), (4, 5), 1e8)])
def test_distance_floor_never_exceeds_the_distance(shape_a, shape_b, offset):
    # a lower bound of every pairwise distance (far from the origin too, where |a|^2 + |b|^2 - 2 a.b
    # cancels), and within its rounding term of the exact value
    rng = np.random.default_rng(shape_a[0])
    a = torch.from_numpy(rng.normal(size=shape_a) + offset)
    b = torch.cat([a[:1], torch.from_numpy(rng.normal(size=(shape_b[0] - 1, shape_b[1])) + offset)])  # one distance 0
    exact = torch.from_numpy(np.sqrt(((a.numpy()[:, None] - b.numpy()[None]) ** 2).sum(-1)))
    floor = spatial.distance_floor(a, b)
    assert floor.shape == exact.shape and floor.dtype == torch.float64
    assert bool((floor <= exact).all())
    scale = float(a.norm(dim=1).max() + b.norm(dim=1).max())
    slack = (spatial.dot_band_coefficient(shape_a[1], spatial.FLOAT64_ROUNDOFF) * 2) ** 0.5 * scale
    assert bool((exact - floor <= slack).all())
    assert torch.equal(spatial.distance_floor(a, b, (b * b).sum(1)), floor)  # b's squared norms given
    assert spatial.distance_floor(a[:0], b).shape == (0, shape_b[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_mapped_empty_is_a_writable_tensor_of_its_own(dtype):
    t = spatial.mapped_empty(1001, dtype)
    assert t.shape == (1001,) and t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
    t.fill_(3)
    view = t[10:20].view(2, 5)
    del t  # the pages live as long as a view of them
    assert int(view.sum()) == 30
    assert spatial.mapped_empty(0, dtype).shape == (0,)


def test_run_parallel_keeps_its_threads_and_runs_nested_passes_inline():
    threads, slots = [], set()  # Thread objects, kept alive (a new thread may reuse an old one's ident)

    def item(k):
        me = threading.current_thread()
        if all(t is not me for t in threads):
            threads.append(me)
        slots.add(spatial.worker_slot())
        # a pass started inside an item runs on that thread (waiting on the pool could deadlock it)
        inner = []
        spatial.run_parallel(lambda j: inner.append(threading.current_thread()), range(3), 2)
        assert all(t is me for t in inner) and len(inner) == 3

    for _ in range(5):  # a pool per pass would start up to 10 threads
        spatial.run_parallel(item, range(8), 2)
    assert 1 <= len(threads) <= 2 and threading.main_thread() not in threads
    assert slots <= {0, 1}
    assert spatial.worker_slot() == 0  # outside the pools


def test_run_parallel_reraises_a_worker_exception():
    def item(k):
        if k == 3:
            raise ValueError("item 3")

    with pytest.raises(ValueError, match="item 3"):
        spatial.run_parallel(item, range(6), 2)
    finished = []

    def slow(k):
        if k == 0:
            raise ValueError("item 0")
        time.sleep(0.05)
        finished.append(k)

    with pytest.raises(ValueError, match="item 0"):
        spatial.run_parallel(slow, range(4), 2)
    count = len(finished)
    time.sleep(0.3)
    assert len(finished) == count  # every item that ran had finished when the error reached the caller
    out = []
    spatial.run_parallel(out.append, range(6), 2)  # the pool still serves
    assert sorted(out) == list(range(6))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_run_parallel_works_in_a_forked_child():
    # a child has none of its parent's pool threads: it must start its own, not wait forever
    spatial.run_parallel(lambda k: None, range(4), 2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        signal.alarm(30)  # a child that waits on threads it does not have dies instead of hanging the suite
        try:
            out = []
            spatial.run_parallel(out.append, range(5), 2)
            os.write(write, b"ok" if sorted(out) == list(range(5)) else b"bad")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 8) == b"ok" and status == 0
    os.close(read)
