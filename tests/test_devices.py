"""Detection follows the policy latents' device; the monitor moves its reference there once.

Issue 12 item 9: with a CUDA model the reward function hands the monitor CUDA latents while the
reference was loaded on the CPU. On a CPU-only machine a tensor that reports another device (its
data stay on the CPU; moving it to the CPU gives a plain tensor and is counted) stands in for a
reference on another device; the CUDA test runs where a GPU is present.
"""
from __future__ import annotations

import pytest
import torch

from inform_fast import dispatch
from inform_fast.detect.icds import icds
from inform_fast.detect.monitor import OverOptimizationMonitor
from inform_fast.testing import requires_cuda


class ElsewhereTensor(torch.Tensor):
    """Reports device cuda:7; ``.to(...)`` returns a plain CPU tensor and counts the move."""

    moves = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is torch._C.TensorBase.device:  # the .device getter
            return torch.device("cuda", 7)
        if func is torch.Tensor.to:
            cls.moves += 1
            return args[0].as_subclass(torch.Tensor).to(*args[1:], **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def elsewhere(tensor: torch.Tensor) -> torch.Tensor:
    ElsewhereTensor.moves = 0
    return tensor.clone().as_subclass(ElsewhereTensor)


def _latents(n, d=5, shift=0.0, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g) + shift


def test_stand_in_reports_another_device():
    reference = elsewhere(_latents(10))
    assert reference.device == torch.device("cuda", 7)
    moved = reference.to("cpu")
    assert type(moved) is torch.Tensor and moved.device.type == "cpu" and ElsewhereTensor.moves == 1


def test_icds_follows_the_policy_latents_device():
    reference, rlhf = _latents(400, seed=1), torch.cat([_latents(60, seed=2), _latents(40, shift=4.0, seed=3, scale=0.2)])
    expected = icds(rlhf, reference, eps=1.0, min_samples=4)
    got = icds(rlhf, elsewhere(reference), eps=1.0, min_samples=4)
    assert ElsewhereTensor.moves == 1
    assert got.score == pytest.approx(expected.score, rel=1e-6) and got.score > 0
    assert got.labels.device.type == "cpu"


def test_monitor_moves_its_reference_once():
    reference = _latents(400, seed=1)
    plain = OverOptimizationMonitor(reference, every=1, method="icds", icds_kwargs={"eps": 1.0, "min_samples": 4})
    moved = OverOptimizationMonitor(elsewhere(reference), every=1, method="icds", icds_kwargs={"eps": 1.0, "min_samples": 4})
    for step in range(3):
        batch = torch.cat([_latents(60, seed=10 + step), _latents(20, shift=3.0 + step, seed=20 + step, scale=0.2)])
        expected = plain.update(step, batch)
        got = moved(batch, step=step)  # the reward-function hook
        assert got["icds"] == pytest.approx(expected["icds"], rel=1e-6) and got["icds"] > 0
    assert ElsewhereTensor.moves == 1  # once, then kept on the latents' device


@requires_cuda()
def test_detection_on_cuda_latents_with_a_cpu_reference(monkeypatch):
    from inform_fast.detect.ibl import ibl_penalty
    from inform_fast.detect.mahalanobis import MahalanobisScorer
    from inform_fast.detect.mop import mop

    if dispatch.triton_interpret():  # interpreted kernels cannot read CUDA tensors: test the devices on the reference path
        monkeypatch.setenv("INFORM_FAST_BACKEND", "reference")
    reference = _latents(2000, seed=1)  # loaded on the CPU, as from a file
    rlhf = torch.cat([_latents(300, seed=2), _latents(100, shift=4.0, seed=3, scale=0.2)]).cuda()
    expected = icds(rlhf.cpu(), reference, eps=1.0, min_samples=4)
    got = icds(rlhf, reference, eps=1.0, min_samples=4)
    assert got.score == pytest.approx(expected.score, rel=1e-4) and got.labels.device.type == "cuda"
    assert mop(rlhf, reference).score == pytest.approx(mop(rlhf.cpu(), reference).score)
    scorer = MahalanobisScorer().fit(reference)
    rewards = torch.randn(400)
    cpu_result = ibl_penalty(rewards, rlhf.cpu(), scorer, coef=0.1)
    for r, z in ((rewards, rlhf), (rewards.cuda(), rlhf), (rewards.cuda(), rlhf.cpu())):
        out = ibl_penalty(r, z, scorer, coef=0.1)
        assert out.device == r.device
        torch.testing.assert_close(out.cpu(), cpu_result, atol=1e-4, rtol=1e-4)
    monitor = OverOptimizationMonitor(reference, every=1, method="both", icds_kwargs={"eps": "auto"})
    for step in range(3):
        values = monitor(rlhf, step=step)
        assert values["evaluated"] == 1.0 and values["mop"] >= 0
    assert set(monitor._reference_by_device) == {"cpu", str(rlhf.device)}
