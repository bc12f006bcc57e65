"""Fused Triton kernels of the InfoRM head against the reference math (Triton interpreter on CPU).

Shapes stay tiny (the interpreter is slow) and odd (H, L, B not powers of two; several H tiles
and row blocks where it matters).
"""
import functools

import pytest
import torch

from inform_fast import InfoRMHead, dispatch, reference
from inform_fast.ops import vib_head as ops
from inform_fast.testing import kernel_test_device, requires_triton_interpreter

pytestmark = requires_triton_interpreter()

DEVICE = kernel_test_device()  # CPU tensors under the interpreter, CUDA with INFORM_FAST_TEST_GPU=1

if dispatch.triton_importable():
    from inform_fast.kernels import vib_head as K

# the registered ops with each backend: the Triton kernels against the reference math
vib_encode = functools.partial(ops.vib_encode, backend="triton")
linear_pairwise_loss = functools.partial(ops.linear_pairwise_loss, backend="triton")
_reference_vib_encode = functools.partial(ops.vib_encode, backend="reference")
_reference_linear_pairwise_loss = functools.partial(ops.linear_pairwise_loss, backend="reference")


def seeded_philox(seed: int, rows: int, latent: int, row_base: int = 0) -> torch.Tensor:
    """The Philox noise the kernels draw after ``torch.manual_seed(seed)`` (the seed the ops draw)."""
    torch.manual_seed(seed)
    return K.philox_noise(int(ops.draw_seed()), rows, latent, DEVICE, row_base)

# dtype, atol, rtol: float64 is exact up to rounding; fp32 differs from the reference only in
# summation order; bf16 outputs are computed in fp32 from the same bf16 values, and bf16
# gradients are rounded once to bf16 (as the reference's are).
DTYPES = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 2e-5, 2e-5),
    (torch.bfloat16, 2e-2, 2e-2),
]


def assert_close(actual, expected, atol, rtol, name=""):
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    err = (actual - expected).abs()
    bad = err > atol + rtol * expected.abs()
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{bad.numel()} mismatches, max abs err {err.max().item():.3e}; "
        f"first: actual {actual[bad][:5].tolist()} expected {expected[bad][:5].tolist()}"
    )


def make_params(hidden, latent, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(2 * latent, hidden, generator=g) * hidden ** -0.5).to(DEVICE, dtype).requires_grad_()
    b = (torch.randn(2 * latent, generator=g) * 0.3).to(DEVICE, dtype).requires_grad_() if bias else None
    wd = (torch.randn(1, latent, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_()
    bd = (torch.randn(1, generator=g)).to(DEVICE, dtype).requires_grad_() if bias else None
    return w, b, wd, bd


def rows(n, hidden, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, hidden, generator=g).to(DEVICE, dtype).requires_grad_()


def grads(outputs, inputs):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(outputs, inputs, allow_unused=False)


# ------------------------------------------------------------------------------------------------
# encoder


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
@pytest.mark.parametrize("bias", [False, True])
def test_encode_matches_reference(dtype, atol, rtol, kl_mode, bias):
    n, hidden, latent = 5, 37, 7
    x = rows(n, hidden, dtype, 1)
    w, b, _, _ = make_params(hidden, latent, dtype, bias)
    acc = reference.accumulation_dtype(dtype)
    noise = torch.randn(n, latent, generator=torch.Generator().manual_seed(2), dtype=acc).to(DEVICE)
    out = vib_encode(x, w, b, noise=noise, sample=True, kl_mode=kl_mode)
    ref = _reference_vib_encode(x, w, b, noise=noise, sample=True, kl_mode=kl_mode)
    for name, o, r in zip(("mu", "logvar", "z", "kl"), out, ref):
        assert o.dtype == acc
        assert_close(o, r, atol, rtol, name)
    # upstream gradients != 1 on every output
    g = torch.Generator().manual_seed(3)
    up = [torch.randn(o.shape, generator=g, dtype=acc).to(DEVICE) for o in out]
    inputs = (x, w, b)
    got = grads(sum((o * u).sum() for o, u in zip(out, up)), inputs)
    want = grads(sum((r * u).sum() for r, u in zip(ref, up)), inputs)
    for name, a, e, t in zip(("pooled", "weight", "bias"), got, want, [t for t in inputs if t is not None]):
        assert a.dtype == t.dtype
        assert_close(a, e, atol * 5, rtol * 5, f"grad {name}")


def test_encode_eval_mode_and_several_blocks():
    # 37 rows (three row blocks), H = 70 (two H tiles), L = 19
    x = rows(37, 70, torch.float32, 4)
    w, b, _, _ = make_params(70, 19, torch.float32, True)
    mu, logvar, z, kl = vib_encode(x, w, b, sample=False)
    rmu, rlogvar, _, rkl = _reference_vib_encode(x, w, b, sample=False)
    assert torch.equal(z, mu)
    assert_close(mu, rmu, 2e-5, 2e-5, "mu")
    assert_close(logvar, rlogvar, 2e-5, 2e-5, "logvar")
    assert_close(kl, rkl, 2e-5, 2e-5, "kl")
    got = grads(mu.sum() + 0.5 * z.square().sum() + kl.sum(), (x, w, b))
    want = grads(rmu.sum() + 0.5 * rmu.square().sum() + rkl.sum(), (x, w, b))
    for name, a, e in zip(("pooled", "weight", "bias"), got, want):
        assert_close(a, e, 1e-4, 1e-4, name)


def test_philox_noise_statistics_and_offsets():
    noise = K.philox_noise(1234, 64, 128, DEVICE)
    assert noise.shape == (64, 128) and noise.dtype == torch.float32
    assert abs(noise.mean().item()) < 0.03
    assert abs(noise.std().item() - 1.0) < 0.03
    assert abs((noise.abs() < 1).float().mean().item() - 0.6827) < 0.02
    # a row's noise depends only on the seed and its global row index
    assert torch.equal(K.philox_noise(1234, 4, 128, DEVICE, row_base=10), noise[10:14])
    assert not torch.equal(K.philox_noise(1235, 64, 128, DEVICE), noise)


def test_encode_philox_deterministic_and_backward_consistent():
    n, hidden, latent = 6, 21, 7
    x = rows(n, hidden, torch.float64, 5)
    w, b, _, _ = make_params(hidden, latent, torch.float64, True)
    torch.manual_seed(7)
    out1 = vib_encode(x, w, b, sample=True)
    torch.manual_seed(7)
    out2 = vib_encode(x, w, b, sample=True)
    assert torch.equal(out1[2], out2[2])
    out3 = vib_encode(x, w, b, sample=True)
    assert not torch.equal(out1[2], out3[2])
    # the same noise fed to the reference gives the same z and the same gradients, so the
    # backward regenerated exactly the forward's noise
    noise = seeded_philox(7, n, latent).double()
    ref = _reference_vib_encode(x, w, b, noise=noise)
    assert_close(out1[2], ref[2], 1e-12, 1e-12, "z")
    up = torch.randn(n, latent, dtype=torch.float64, device=DEVICE)
    got = grads((out1[2] * up).sum() + out1[3].sum(), (x, w, b))
    want = grads((ref[2] * up).sum() + ref[3].sum(), (x, w, b))
    for name, a, e in zip(("pooled", "weight", "bias"), got, want):
        assert_close(a, e, 1e-10, 1e-10, name)


@pytest.mark.parametrize("explicit, kl_mode", [(True, "standard"), (False, "authors")])
def test_encode_gradcheck(explicit, kl_mode):
    n, hidden, latent = 3, 5, 3
    x = rows(n, hidden, torch.float64, 6)
    w, b, _, _ = make_params(hidden, latent, torch.float64, True)
    noise = torch.randn(n, latent, dtype=torch.float64, device=DEVICE) if explicit else None

    def encode(x, w, b):
        torch.manual_seed(99)  # the same Philox seed at every evaluation
        return vib_encode(x, w, b, noise=noise, sample=True, kl_mode=kl_mode)

    assert torch.autograd.gradcheck(encode, (x, w, b), fast_mode=True)


# ------------------------------------------------------------------------------------------------
# pairwise loss


def loss_outputs(result):
    return dict(zip(result.terms._fields, result.terms)) | {
        "reward_chosen": result.reward_chosen, "reward_rejected": result.reward_rejected, "mu": result.mu, "logvar": result.logvar}


def check_loss(dtype, atol, rtol, kl_mode, bias, margin=None, pairs=5, hidden=37, latent=7, sample=True, upstream=2.5, param_dtype=None,
               center=0.25, h_splits=None):
    chosen = rows(pairs, hidden, dtype, 10)
    rejected = rows(pairs, hidden, dtype, 11)
    params = make_params(hidden, latent, param_dtype or dtype, bias)
    acc = reference.accumulation_dtype(dtype)
    g = torch.Generator().manual_seed(12)
    noise_w = torch.randn(pairs, latent, generator=g, dtype=acc).to(DEVICE) if sample else None
    noise_l = torch.randn(pairs, latent, generator=g, dtype=acc).to(DEVICE) if sample else None
    kwargs = dict(noise_chosen=noise_w, noise_rejected=noise_l, sample=sample, beta=0.3, margin=margin, kl_mode=kl_mode,
                  center_rewards_coefficient=center)
    out = loss_outputs(linear_pairwise_loss(chosen, rejected, *params, h_splits=h_splits, **kwargs))
    ref = loss_outputs(_reference_linear_pairwise_loss(chosen, rejected, *params, **kwargs))
    for name in out:
        assert out[name].dtype == acc, name
        assert_close(out[name], ref[name], atol, rtol, name)
    assert not out["reward_chosen"].requires_grad and not out["kl"].requires_grad
    inputs = [chosen, rejected, *params]
    got = grads(out["loss"] * upstream, inputs)
    want = grads(ref["loss"] * upstream, inputs)
    names = ["chosen", "rejected", "encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias"]
    for name, a, e, t in zip([n for n, t in zip(names, inputs) if t is not None], got, want, [t for t in inputs if t is not None]):
        assert a.dtype == t.dtype, name
        assert_close(a, e, atol * 5, rtol * 5, f"grad {name}")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
@pytest.mark.parametrize("bias", [False, True])
def test_loss_matches_reference(dtype, atol, rtol, kl_mode, bias):
    check_loss(dtype, atol, rtol, kl_mode, bias)


@pytest.mark.parametrize("margin", [0.7, torch.tensor(-0.4, dtype=torch.float64), "tensor"])
def test_loss_margin(margin):
    if isinstance(margin, torch.Tensor):
        margin = margin.to(DEVICE)
    if isinstance(margin, str):
        margin = torch.linspace(-1, 1, 5, dtype=torch.float64, device=DEVICE)
    check_loss(torch.float64, 1e-10, 1e-10, "standard", True, margin=margin, upstream=-0.75)


def test_loss_eval_mode_several_blocks():
    # 17 pairs (two pair blocks), H = 70 (two H tiles), L = 19, z = mu
    check_loss(torch.float32, 2e-5, 2e-5, "standard", True, pairs=17, hidden=70, latent=19, sample=False)


def test_loss_input_gradient_several_row_blocks():
    # 37 pairs: 74 rows of dX, two 64-row blocks of the input-gradient kernel, the second partial
    check_loss(torch.float32, 2e-5, 2e-5, "authors", False, pairs=37, hidden=70, latent=9)


def test_loss_mixed_dtypes():
    # bf16 rows with fp32 weights (bf16 backbone, fp32 head); gradients in each tensor's dtype
    check_loss(torch.bfloat16, 2e-2, 2e-2, "standard", True, param_dtype=torch.float32)


def test_loss_large_logits_are_finite():
    # a huge decoder weight drives |r_w - r_l| to ~1e4: softplus and its gradient must stay finite
    chosen, rejected = rows(5, 37, torch.float32, 13), rows(5, 37, torch.float32, 14)
    w, b, wd, bd = make_params(37, 7, torch.float32, False)
    wd = (wd.detach() * 1e4).requires_grad_()
    terms, r_w, r_l = linear_pairwise_loss(chosen, rejected, w, b, wd, bd)[:3]
    ref = _reference_linear_pairwise_loss(chosen, rejected, w, b, wd, bd).terms
    assert (r_w - r_l).abs().max() > 100
    assert torch.isfinite(terms.loss)
    assert_close(terms.loss, ref.loss, 1e-3, 1e-5, "loss")
    got, want = grads(terms.loss, (chosen, w, wd)), grads(ref.loss, (chosen, w, wd))
    for name, a, e in zip(("chosen", "w", "wd"), got, want):
        assert torch.isfinite(a).all(), name
        assert_close(a, e, 1e-3, 1e-4, name)


def test_loss_partial_noise_without_sampling():
    # one explicit noise and sample=False: the other side uses z = mu, as in the reference
    chosen, rejected = rows(5, 19, torch.float64, 15), rows(5, 19, torch.float64, 16)
    params = make_params(19, 7, torch.float64, True)
    noise = torch.randn(5, 7, dtype=torch.float64, device=DEVICE)
    terms, r_w, r_l = linear_pairwise_loss(chosen, rejected, *params, noise_chosen=noise)[:3]
    ref, rr_w, rr_l = _reference_linear_pairwise_loss(chosen, rejected, *params, noise_chosen=noise)[:3]
    assert_close(terms.loss, ref.loss, 1e-12, 1e-12, "loss")
    assert_close(r_l, rr_l, 1e-12, 1e-12, "reward_rejected")


def test_loss_philox_deterministic_and_consistent():
    pairs, hidden, latent = 5, 21, 7
    chosen, rejected = rows(pairs, hidden, torch.float64, 17), rows(pairs, hidden, torch.float64, 18)
    params = make_params(hidden, latent, torch.float64, True)
    torch.manual_seed(3)
    terms, r_w, _ = linear_pairwise_loss(chosen, rejected, *params, sample=True)[:3]
    torch.manual_seed(3)
    again, r_w2, _ = linear_pairwise_loss(chosen, rejected, *params, sample=True)[:3]
    assert torch.equal(terms.loss, again.loss) and torch.equal(r_w, r_w2)
    other = linear_pairwise_loss(chosen, rejected, *params, sample=True).terms
    assert not torch.equal(terms.loss, other.loss)
    # chosen rows use global Philox rows 0..B-1, rejected rows B..2B-1
    noise_w = seeded_philox(3, pairs, latent).double()
    noise_l = seeded_philox(3, pairs, latent, row_base=pairs).double()
    ref, rr_w, _ = _reference_linear_pairwise_loss(chosen, rejected, *params, noise_chosen=noise_w, noise_rejected=noise_l)[:3]
    assert_close(terms.loss, ref.loss, 1e-12, 1e-12, "loss")
    inputs = [chosen, rejected, *params]
    for name, a, e in zip(("chosen", "rejected", "w", "b", "wd", "bd"), grads(terms.loss, inputs), grads(ref.loss, inputs)):
        assert_close(a, e, 1e-10, 1e-10, name)


def test_loss_without_grad():
    chosen, rejected = rows(5, 19, torch.float32, 19), rows(5, 19, torch.float32, 20)
    params = make_params(19, 7, torch.float32, False)
    with torch.no_grad():
        terms = linear_pairwise_loss(chosen, rejected, *params).terms
    ref = _reference_linear_pairwise_loss(chosen, rejected, *params).terms
    assert not terms.loss.requires_grad
    assert_close(terms.loss, ref.loss, 2e-5, 2e-5, "loss")


@pytest.mark.parametrize("explicit, kl_mode, bias, center", [(True, "authors", False, 0.0), (False, "standard", True, 0.4)])
def test_loss_gradcheck(explicit, kl_mode, bias, center):
    pairs, hidden, latent = 3, 5, 3
    chosen, rejected = rows(pairs, hidden, torch.float64, 21), rows(pairs, hidden, torch.float64, 22)
    w, b, wd, bd = make_params(hidden, latent, torch.float64, bias)
    noise_w = torch.randn(pairs, latent, dtype=torch.float64, device=DEVICE) if explicit else None
    noise_l = torch.randn(pairs, latent, dtype=torch.float64, device=DEVICE) if explicit else None
    margin = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, device=DEVICE)

    def fn(chosen, rejected, w, wd, *biases):
        b, bd = biases if biases else (None, None)
        torch.manual_seed(5)  # the same Philox seed at every evaluation
        return linear_pairwise_loss(chosen, rejected, w, b, wd, bd, noise_chosen=noise_w, noise_rejected=noise_l,
                                    sample=True, beta=0.3, margin=margin, kl_mode=kl_mode,
                                    center_rewards_coefficient=center).terms.loss

    inputs = (chosen, rejected, w, wd) + ((b, bd) if bias else ())
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


# ------------------------------------------------------------------------------------------------
# split-H layout: on a GPU a batch with fewer row blocks than SMs also splits H (partial
# projections summed in the epilogue; input gradient over a (row block, H range) grid). The
# interpreter has no SMs, so the tests ask for it with the ``h_splits`` argument.


def test_split_h_heuristic():
    gpu, cpu = K.Target("cuda", 132), K.Target("cpu")
    # 32 row blocks at H = 4096: 132 // 32 = 4 ranges of 1024 columns
    assert K.split_h(32, 4096, 64, gpu, K._FORWARD_MIN_COLUMNS) == (4, 1024)
    # dX for the 1,024 rows of B = 512: 16 row blocks of 64, 32-wide tiles: 8 ranges of 512 columns
    assert K.split_h(16, 4096, 32, gpu, K._GRAD_INPUT_MIN_COLUMNS) == (8, 512)
    # enough row blocks to fill the GPU, or H too narrow for a second 512-column range: one range
    assert K.split_h(256, 4096, 64, gpu, K._FORWARD_MIN_COLUMNS) == (1, 4096)
    assert K.split_h(2, 960, 32, gpu, K._FORWARD_MIN_COLUMNS) == (1, 960)
    # B = 64: 2 projection blocks would want 66 ranges; at least 512 columns each caps it at 8
    assert K.split_h(2, 4096, 32, gpu, K._FORWARD_MIN_COLUMNS) == (8, 512)
    assert K.split_h(2, 4096, 32, gpu, K._GRAD_INPUT_MIN_COLUMNS) == (16, 256)
    # the goal size through the launchers' layout: the projection runs in 64-row blocks, 8 of
    # them for 512 chosen + 512 rejected rows, so H = 4096 splits into 8 ranges (128 programs)
    assert K._split_layout(512, 2, 4096, 256, 2, gpu, None) == (8, 512)
    # B = 4096: 128 blocks fill the GPU, one range (still the separate projection kernel)
    assert K._split_layout(4096, 2, 4096, 256, 2, gpu, None) == (1, 4096)
    # the single fused kernel: on CPU by default, or asked for with 0
    assert K._split_layout(512, 2, 4096, 256, 2, cpu, None) == (0, 4096)
    assert K._split_layout(512, 2, 4096, 256, 2, gpu, 0) == (0, 4096)
    assert K.split_h(16, 4096, 32, gpu, K._GRAD_INPUT_MIN_COLUMNS, 0) == (1, 4096)
    # ranges are whole tiles and cover H exactly once
    splits, per_split = K.split_h(3, 1000, 64, gpu, 64)
    assert per_split % 64 == 0 and (splits - 1) * per_split < 1000 <= splits * per_split
    # CPU: no split unless asked; asking ignores the minimum width, down to one tile per range
    assert K.split_h(1, 4096, 64, cpu, 64) == (1, 4096)
    assert K.split_h(1, 300, 64, cpu, 512, 3) == (3, 128)
    assert K.split_h(1, 300, 64, cpu, 512, 50) == (5, 64)


def test_gpu_configs_are_the_launchers_plans():
    # the compile and spill checks read gpu_configs(): it must be what the launchers plan for the
    # goal size on a 132-SM GPU, so a changed heuristic changes what those checks compile
    bf16 = torch.bfloat16
    configs = K.gpu_configs()
    launches, splits, _ = K._pair_loss_launches(512, 4096, 128, bf16, torch.float32, None, bf16, None, False,
                                                K.NOISE_PHILOX, False, True, K.HOPPER, None)
    assert splits == 8 and [c[0] for c in configs[:2]] == [launch.kernel for launch in launches]
    for config, launch in zip(configs, launches):
        assert config == (launch.kernel, launch.pointer_types, launch.constexprs, launch.num_warps)
    assert configs[1][2]["PRE_PROJECTED"] and configs[1][2]["BLOCK_B"] == 16
    assert configs[0][2]["BLOCK_N"] == 64 and configs[0][2]["BLOCK_K"] == 256 and configs[0][3] == 8
    assert not any(c[2].get("UPCAST") for c in configs)  # compiled, not interpreted


@pytest.mark.parametrize("splits", [0, 1, 3])  # 0: the one-kernel layout (CPU default; on a GPU only when asked)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_split_h_encode_matches_reference(splits, dtype, atol, rtol):
    # 21 rows, H = 300 (the projection kernel in one range, or in three: 128 + 128 + 44 columns), L = 19
    n, hidden, latent = 21, 300, 19
    x = rows(n, hidden, dtype, 30)
    w, b, _, _ = make_params(hidden, latent, dtype, True, seed=31)
    acc = reference.accumulation_dtype(dtype)
    noise = torch.randn(n, latent, generator=torch.Generator().manual_seed(32), dtype=acc).to(DEVICE)
    up = [torch.randn(shape, generator=torch.Generator().manual_seed(33), dtype=acc).to(DEVICE)
          for shape in ((n, latent),) * 3 + ((n,),)]
    out = vib_encode(x, w, b, noise=noise, h_splits=splits)
    got = grads(sum((o * u).sum() for o, u in zip(out, up)), (x, w, b))
    ref = _reference_vib_encode(x, w, b, noise=noise)
    want = grads(sum((r * u).sum() for r, u in zip(ref, up)), (x, w, b))
    scale = 1 if dtype == torch.bfloat16 else 10  # fp32/fp64 sums over H = 300, not 37
    for name, o, r in zip(("mu", "logvar", "z", "kl"), out, ref):
        assert_close(o, r, atol * scale, rtol * scale, name)
    for name, a, e in zip(("pooled", "weight", "bias"), got, want):
        assert_close(a, e, atol * 5 * scale, rtol * 5 * scale, f"grad {name}")


@pytest.mark.parametrize("splits", [0, 1, 3])  # 0: the one-kernel layout (CPU default; on a GPU only when asked)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_split_h_loss_matches_reference(splits, dtype, atol, rtol):
    scale = 1 if dtype == torch.bfloat16 else 10
    check_loss(dtype, atol * scale, rtol * scale, "standard", True, pairs=17, hidden=300, latent=19, h_splits=splits)


def test_split_h_several_projection_blocks():
    # 70 pairs: two 64-row projection blocks per set (the second partial), for chosen and rejected
    check_loss(torch.float32, 1e-4, 1e-4, "standard", False, pairs=70, hidden=150, latent=5, h_splits=2)


def test_split_h_output_tiles(monkeypatch):
    # 2L > 256 (L >= 129) takes several output tiles per row block; shrunk here to 16-wide tiles
    # so that L = 19 needs three of them
    monkeypatch.setattr(K, "_PARTIAL_MAX_BLOCK_K", 16)
    check_loss(torch.float32, 1e-4, 1e-4, "standard", True, pairs=9, hidden=150, latent=19, h_splits=2)
    x = rows(9, 150, torch.float32, 40)
    w, b, _, _ = make_params(150, 19, torch.float32, True, seed=41)
    out = vib_encode(x, w, b, sample=False, h_splits=2)
    ref = _reference_vib_encode(x, w, b, sample=False)
    for name, o, r in zip(("mu", "logvar", "z", "kl"), out, ref):
        assert_close(o, r, 1e-4, 1e-4, name)


def test_split_h_philox_same_noise_as_unsplit():
    # the split changes where the projection is summed, not the noise: same seed, same loss
    pairs, hidden, latent = 5, 200, 7
    chosen, rejected = rows(pairs, hidden, torch.float64, 34), rows(pairs, hidden, torch.float64, 35)
    params = make_params(hidden, latent, torch.float64, True, seed=36)
    torch.manual_seed(4)
    whole, r_w, _ = linear_pairwise_loss(chosen, rejected, *params, sample=True)[:3]
    torch.manual_seed(4)
    split, s_w, _ = linear_pairwise_loss(chosen, rejected, *params, sample=True, h_splits=4)[:3]
    assert_close(split.loss, whole.loss, 1e-12, 1e-12, "loss")
    assert_close(s_w, r_w, 1e-12, 1e-12, "reward_chosen")


# ------------------------------------------------------------------------------------------------
# the head end to end, errors, dispatch


@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_head_triton_matches_reference(decoder):
    torch.manual_seed(0)
    hidden, latent, batch, seq = 37, 7, 5, 6
    ref_head = InfoRMHead(hidden, latent, decoder=decoder, bias=True, kl="standard", backend="reference").to(DEVICE)
    tri_head = InfoRMHead(hidden, latent, decoder=decoder, bias=True, kl="standard", backend="triton").to(DEVICE)
    tri_head.load_state_dict(ref_head.state_dict())
    states_w = torch.randn(batch, seq, hidden, device=DEVICE)
    states_l = torch.randn(batch, seq, hidden, device=DEVICE)
    mask = torch.ones(batch, seq, dtype=torch.long, device=DEVICE)
    mask[1, :2] = 0  # left padding
    mask[3, -3:] = 0  # right padding
    noise_w, noise_l = torch.randn(batch, latent, device=DEVICE), torch.randn(batch, latent, device=DEVICE)

    for head in (ref_head, tri_head):
        head.eval()
    out_r, out_t = ref_head(states_w, mask), tri_head(states_w, mask)
    for name in ("reward", "mu", "logvar", "z", "kl"):
        assert_close(getattr(out_t, name), getattr(out_r, name), 2e-5, 2e-5, name)

    for head in (ref_head, tri_head):
        head.train()
    losses = [
        head.pairwise_loss(states_w, states_l, beta=0.2, margin=0.1, noise_chosen=noise_w, noise_rejected=noise_l,
                           chosen_attention_mask=mask, rejected_attention_mask=mask, center_rewards_coefficient=0.3)
        for head in (ref_head, tri_head)
    ]
    for name in ("loss", "preference_loss", "kl", "accuracy", "reward_margin", "reward_chosen", "reward_rejected", "mu", "logvar"):
        assert_close(getattr(losses[1], name), getattr(losses[0], name), 2e-5, 2e-5, name)
    for head, result in zip((ref_head, tri_head), losses):
        head.zero_grad()
        (result.loss * 1.5).backward()
    for (name, p_r), p_t in zip(ref_head.named_parameters(), tri_head.parameters()):
        assert_close(p_t.grad, p_r.grad, 1e-4, 1e-4, f"grad {name}")


def test_bad_input_names_the_argument():
    x = rows(5, 37, torch.float32, 0)
    w, b, wd, bd = make_params(37, 7, torch.float32, True)
    with pytest.raises(ValueError, match="weight"):
        vib_encode(x, w[:, :30], b)
    with pytest.raises(ValueError, match="noise"):
        vib_encode(x, w, b, noise=torch.zeros(5, 6))
    with pytest.raises(ValueError, match="kl_mode"):
        vib_encode(x, w, b, kl_mode="nope")
    with pytest.raises(ValueError, match="rejected"):
        linear_pairwise_loss(x, x[:4], w, b, wd, bd)
    with pytest.raises(ValueError, match="margin"):
        linear_pairwise_loss(x, x, w, b, wd, bd, margin=torch.zeros(4))
    with pytest.raises(ValueError, match="decoder_weight"):
        linear_pairwise_loss(x, x, w, b, wd[:, :3], bd)
    with pytest.raises(ValueError, match="noise_rejected"):
        linear_pairwise_loss(x, x, w, b, wd, bd, noise_rejected=torch.zeros(5, 8))


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dispatch.resolve("linear_pairwise_loss", "cpu", "triton")
    head = InfoRMHead(8, 4, backend="triton")
    with pytest.raises(RuntimeError, match="triton"):
        head(torch.randn(2, 8))
