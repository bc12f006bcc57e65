"""Latent matrices: conversion, checks and reading from files."""
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inform_fast.detect.inputs import as_latents, load_latents


def test_numpy_is_shared_and_ints_become_float():
    array = np.random.rand(5, 3).astype(np.float32)
    tensor = as_latents("x", array)
    assert tensor.dtype == torch.float32 and np.shares_memory(tensor.numpy(), array)
    assert as_latents("x", np.ones((2, 2), dtype=np.int64)).dtype == torch.float32
    assert as_latents("x", torch.ones(2, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "value, kwargs, match",
    [
        (np.zeros(4), {}, "2-D"),
        (np.zeros((0, 3)), {}, "empty"),
        (np.zeros((3, 0)), {}, "latent dimension is 0"),
        (np.array([[1.0, np.nan]]), {}, "NaN/Inf.*index \\(0, 1\\)"),
        (np.array([[np.inf, 1.0]]), {}, "NaN/Inf"),
        (np.zeros((2, 3)), {"dim": 4}, "does not match the expected 4"),
        (np.array([["a", "b"]]), {}, "numeric"),
    ],
)
def test_bad_latents_name_the_argument(value, kwargs, match):
    with pytest.raises(ValueError, match=f"rlhf_latents: .*{match}"):
        as_latents("rlhf_latents", value, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_check_sees_every_bad_value_and_no_overflow(dtype):
    from inform_fast.validation import check_finite

    big = torch.finfo(dtype).max
    check_finite("x", torch.full((257, 3), big, dtype=dtype))  # the sum overflows, the values are finite
    check_finite("x", torch.zeros(0, 3, dtype=dtype))
    for bad, where in ((float("nan"), (200, 1)), (float("inf"), (3, 2)), (-float("inf"), (256, 0))):
        x = torch.randn(257, 3).to(dtype)
        x[where] = bad
        with pytest.raises(ValueError, match=re.escape(f"x: contains 1 NaN/Inf value(s), first at index {where}")):
            check_finite("x", x)
    both = torch.randn(64, 5).to(dtype)
    both[1, 1], both[40, 2] = float("inf"), -float("inf")  # they cancel to NaN in the sum, still caught
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        check_finite("x", both)


def test_read_each_format(tmp_path):
    data = torch.randn(7, 5)
    np.save(tmp_path / "a.npy", data.numpy())
    save_file({"mu": data, "rewards": torch.randn(7)}, str(tmp_path / "a.safetensors"))
    torch.save({"latents": data}, tmp_path / "a.pt")
    for name in ("a.npy", "a.safetensors", "a.pt"):
        torch.testing.assert_close(load_latents(str(tmp_path / name)), data)
    torch.testing.assert_close(load_latents(str(tmp_path / "a.safetensors"), key="mu"), data)


def test_file_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--rlhf: file not found"):
        load_latents(str(tmp_path / "missing.npy"), name="--rlhf")
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="--rlhf: could not read .*bad.npy"):
        load_latents(str(tmp_path / "bad.npy"), name="--rlhf")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="--rlhf: unsupported file type '.csv'"):
        load_latents(str(tmp_path / "x.csv"), name="--rlhf")
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="several tensors"):
        load_latents(str(tmp_path / "two.safetensors"), name="--rlhf")
    with pytest.raises(ValueError, match="key 'c' not in"):
        load_latents(str(tmp_path / "two.safetensors"), key="c", name="--rlhf")
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        load_latents(str(tmp_path / "nan.npy"))


@pytest.mark.parametrize("value", [
    np.ones((3, 2), dtype=np.complex64) * (1 + 2j),
    torch.ones(3, 2, dtype=torch.complex64) * (1 + 2j),
    np.ones((3, 2), dtype=np.complex128),  # an imaginary part of 0 is still a complex input
], ids=["numpy complex64", "torch complex64", "numpy complex128"])
def test_complex_latents_are_refused_not_cast(value):
    # the cast used to drop the imaginary part with only a warning
    with pytest.raises(ValueError, match="rlhf_latents: expected real numbers, got complex"):
        as_latents("rlhf_latents", value)


def test_bool_tensors_are_refused_like_bool_arrays():
    for value in (np.ones((2, 2), dtype=bool), torch.ones(2, 2, dtype=torch.bool)):
        with pytest.raises(ValueError, match="x: expected a numeric"):
            as_latents("x", value)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i4", "<f4"])
def test_any_byte_order_is_read(tmp_path, dtype):
    values = np.random.default_rng(0).normal(size=(7, 3)) * 100
    np.save(tmp_path / "x.npy", values.astype(dtype))
    loaded = load_latents(str(tmp_path / "x.npy"), name="--rlhf")
    torch.testing.assert_close(loaded.double(), torch.from_numpy(values.astype(dtype).astype(np.float64)), rtol=0, atol=0)


def test_numpy_scalars_are_numbers():
    """np.float32(0.5) is a number a user passes without thinking; only Python floats were taken."""
    from inform_fast import InfoRMHead, MahalanobisScorer, ibl_penalty, icds, mop

    rng = np.random.default_rng(0)
    reference, rlhf = rng.normal(size=(200, 4)), rng.normal(size=(50, 4))
    assert icds(rlhf, reference, eps=np.float32(0.5)).eps == 0.5
    assert icds(rlhf, reference, eps=0.5).score == icds(rlhf, reference, eps=np.float64(0.5)).score
    assert mop(rlhf, reference, alpha=np.float32(0.25)).alpha == 0.25
    scorer = MahalanobisScorer(eps=np.float32(1e-3), shrinkage=np.float16(0.5)).fit(reference)
    assert scorer.eps == pytest.approx(1e-3) and scorer.shrinkage == 0.5
    rewards = torch.zeros(50)
    torch.testing.assert_close(ibl_penalty(rewards, rlhf, scorer, coef=np.float32(0.5)), ibl_penalty(rewards, rlhf, scorer, coef=0.5))
    head = InfoRMHead(6, 3)
    hidden = torch.randn(4, 6)
    assert head.pairwise_loss(hidden, hidden.flip(0), beta=np.float32(0.1), margin=np.int64(1)).loss.isfinite()
    for bad in (np.bool_(True), True, np.float32("nan"), np.complex64(1), "0.5"):
        with pytest.raises(ValueError, match="^eps: expected a"):
            icds(rlhf, reference, eps=bad)


def test_automatic_eps_errors_name_the_callers_argument():
    from inform_fast import icds
    from inform_fast.detect.icds import auto_eps

    with pytest.raises(ValueError, match=r"^rlhf_latents: automatic eps needs at least 2 latents"):
        icds(np.zeros((1, 3)), np.random.default_rng(0).normal(size=(50, 3)), eps="auto")
    with pytest.raises(ValueError, match=r"^reference: automatic eps needs at least 2 latents"):
        auto_eps(np.zeros((1, 3)), name="reference")
