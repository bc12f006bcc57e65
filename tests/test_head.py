"""InfoRMHead and its loss against an independent float64 computation of the formulas of docs/math.md."""
import math

import numpy as np
import pytest
import torch

from inform_fast import InfoRMHead, inform_loss, reference


def spec_head_numpy(pooled, w_enc, b_enc, w_dec, b_dec, noise, kl_mode):
    """docs/math.md written out row by row in float64 NumPy, independent of inform_fast.reference."""
    pooled = np.asarray(pooled, dtype=np.float64)
    latent = w_enc.shape[0] // 2
    rewards, kls, mus = [], [], []
    for i, h in enumerate(pooled):
        stats = w_enc.astype(np.float64) @ h + (0.0 if b_enc is None else b_enc)
        mu, logvar = stats[:latent], stats[latent:]
        z = mu if noise is None else mu + np.exp(logvar / 2) * noise[i]
        reward = float(np.dot(z, w_dec.reshape(-1))) + (0.0 if b_dec is None else float(b_dec[0]))
        if kl_mode == "standard":
            kl = 0.5 * sum(m * m + math.exp(v) - 1 - v for m, v in zip(mu, logvar))
        else:
            m, v = float(np.mean(mu)), float(np.mean(logvar))
            kl = 0.5 * (m * m + math.exp(v) - 1 - v)
        rewards.append(reward)
        kls.append(kl)
        mus.append(mu)
    return np.array(rewards), np.array(kls), np.array(mus)


def spec_loss_numpy(r_w, r_l, kl_w, kl_l, beta, margin, kl_mode="standard"):
    logits = r_w - r_l - (0.0 if margin is None else margin)
    preference = np.mean(np.log1p(np.exp(-logits)))  # -logsigmoid(x) = log(1 + e^-x)
    # docs/math.md: mean over pairs of KL_w + KL_l; the authors' code: mean over all 2B rows
    kl = np.mean(kl_w + kl_l) if kl_mode == "standard" else np.mean(np.concatenate([kl_w, kl_l]))
    return preference + beta * kl, preference, kl, np.mean(r_w > r_l)


def params(head):
    w_enc = head.encoder.weight.detach().double().numpy()
    b_enc = None if head.encoder.bias is None else head.encoder.bias.detach().double().numpy()
    w_dec = head.decoder.weight.detach().double().numpy()
    b_dec = None if head.decoder.bias is None else head.decoder.bias.detach().double().numpy()
    return w_enc, b_enc, w_dec, b_dec


@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_forward_matches_spec(kl_mode, bias, training):
    torch.manual_seed(0)
    hidden, latent, rows = 37, 11, 9
    head = InfoRMHead(hidden, latent_dim=latent, bias=bias, kl=kl_mode).double().train(training)
    pooled = torch.randn(rows, hidden, dtype=torch.float64)
    noise = torch.randn(rows, latent, dtype=torch.float64)
    out = head(pooled, noise=noise)
    r, kl, mu = spec_head_numpy(pooled.numpy(), *params(head), noise.numpy() if training else None, kl_mode)
    np.testing.assert_allclose(out.reward.detach().numpy(), r, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.kl.detach().numpy(), kl, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.mu.detach().numpy(), mu, rtol=1e-10, atol=1e-10)
    if not training:
        assert torch.equal(out.z, out.mu)


def test_eval_ignores_noise_and_training_draws_it():
    torch.manual_seed(1)
    head = InfoRMHead(16, latent_dim=5).eval()
    x = torch.randn(4, 16)
    a = head(x, noise=torch.randn(4, 5)).reward
    b = head(x).reward
    assert torch.equal(a, b)
    head.train()
    torch.manual_seed(2)
    c = head(x).z
    torch.manual_seed(2)
    d = head(x).z
    assert torch.equal(c, d) and not torch.allclose(c, head(x).mu)


@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
@pytest.mark.parametrize("margin", [None, 0.3, "tensor"])
def test_pairwise_loss_matches_spec(kl_mode, margin):
    torch.manual_seed(3)
    hidden, latent, pairs, beta = 29, 7, 13, 0.25
    head = InfoRMHead(hidden, latent_dim=latent, bias=True, kl=kl_mode).double().train()
    chosen, rejected = torch.randn(pairs, hidden, dtype=torch.float64), torch.randn(pairs, hidden, dtype=torch.float64)
    n_w, n_l = torch.randn(pairs, latent, dtype=torch.float64), torch.randn(pairs, latent, dtype=torch.float64)
    if margin == "tensor":
        margin = torch.rand(pairs, dtype=torch.float64)
    out = head.pairwise_loss(chosen, rejected, beta=beta, margin=margin, noise_chosen=n_w, noise_rejected=n_l)
    r_w, kl_w, _ = spec_head_numpy(chosen.numpy(), *params(head), n_w.numpy(), kl_mode)
    r_l, kl_l, _ = spec_head_numpy(rejected.numpy(), *params(head), n_l.numpy(), kl_mode)
    m = margin.numpy() if isinstance(margin, torch.Tensor) else margin
    loss, preference, kl, accuracy = spec_loss_numpy(r_w, r_l, kl_w, kl_l, beta, m, kl_mode)
    assert out.loss.item() == pytest.approx(loss, rel=1e-10)
    assert out.preference_loss.item() == pytest.approx(preference, rel=1e-10)
    assert out.kl.item() == pytest.approx(kl, rel=1e-10)
    assert out.accuracy.item() == pytest.approx(accuracy)
    assert out.reward_margin.item() == pytest.approx(np.mean(r_w - r_l), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(out.reward_chosen.detach().numpy(), r_w, rtol=1e-10)
    functional = inform_loss(head, chosen, rejected, beta=beta, margin=margin, noise_chosen=n_w, noise_rejected=n_l)
    assert torch.equal(functional.loss, out.loss)


def test_mlp_decoder_matches_formula():
    torch.manual_seed(4)
    head = InfoRMHead(24, latent_dim=6, decoder="mlp", bias=True).double().eval()
    x = torch.randn(5, 24, dtype=torch.float64)
    out = head(x)
    d = head.decoder
    z = out.mu
    hidden = torch.nn.functional.silu(z @ d.gate_proj.weight.T + d.gate_proj.bias) * (z @ d.up_proj.weight.T + d.up_proj.bias)
    expected = (hidden @ d.down_proj.weight.T + d.down_proj.bias).squeeze(-1)
    torch.testing.assert_close(out.reward, expected, rtol=1e-12, atol=1e-12)
    assert d.gate_proj.out_features == 24  # intermediate size 4L


@pytest.mark.parametrize("side", ["left", "right", "none"])
def test_padding_pools_last_real_token(side):
    torch.manual_seed(5)
    batch, seq, hidden = 6, 10, 19
    head = InfoRMHead(hidden, latent_dim=4).eval()
    states = torch.randn(batch, seq, hidden)
    lengths = torch.tensor([10, 1, 7, 3, 10, 5])
    mask = torch.zeros(batch, seq, dtype=torch.long)
    expected_rows = []
    for i, n in enumerate(lengths.tolist()):
        if side == "left":
            mask[i, seq - n:] = 1
            expected_rows.append(states[i, seq - 1])
        elif side == "right":
            mask[i, :n] = 1
            expected_rows.append(states[i, n - 1])
        else:
            mask[i] = 1
            expected_rows.append(states[i, seq - 1])
    out = head(states, attention_mask=mask)
    ref = head(torch.stack(expected_rows))
    torch.testing.assert_close(out.reward, ref.reward)
    loss_padded = head.pairwise_loss(states, states.flip(0), chosen_attention_mask=mask, rejected_attention_mask=mask.flip(0))
    loss_pooled = head.pairwise_loss(torch.stack(expected_rows), torch.stack(expected_rows).flip(0))
    torch.testing.assert_close(loss_padded.loss, loss_pooled.loss)


def test_only_last_token_reaches_the_head():
    """Changing padding positions or earlier tokens' hidden states must not change the reward."""
    head = InfoRMHead(8, latent_dim=3).eval()
    states = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    before = head(states, mask).reward
    states2 = states.clone()
    states2[0, 3:] = 1e6
    states2[0, :2] = -3.0
    states2[1, 0] = 1e6
    torch.testing.assert_close(head(states2, mask).reward, before)


class _LossModule(torch.nn.Module):
    """Wraps pairwise_loss as a forward so torch.func.functional_call can swap in the parameters."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, chosen, rejected, noise_chosen, noise_rejected):
        return self.head.pairwise_loss(
            chosen, rejected, beta=0.3, margin=0.1, noise_chosen=noise_chosen, noise_rejected=noise_rejected
        ).loss


@pytest.mark.parametrize("decoder", ["linear", "mlp"])
@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
def test_gradcheck_loss(decoder, kl_mode):
    """gradcheck of the loss w.r.t. the inputs and every parameter, in float64."""
    torch.manual_seed(6)
    head = InfoRMHead(7, latent_dim=3, decoder=decoder, bias=True, kl=kl_mode, backend="reference").double().train()
    wrapper = _LossModule(head)
    names = [name for name, _ in wrapper.named_parameters()]
    noise = (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))

    def loss_fn(chosen, rejected, *parameters):
        return torch.func.functional_call(wrapper, dict(zip(names, parameters)), (chosen, rejected) + noise)

    inputs = [torch.randn(4, 7, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    inputs += [p.detach().clone().requires_grad_(True) for p in wrapper.parameters()]
    assert torch.autograd.gradcheck(loss_fn, tuple(inputs), eps=1e-6, atol=1e-6)


def test_gradcheck_forward_outputs():
    """gradcheck through reward, mu, logvar, z and kl of forward (training mode), float64."""
    torch.manual_seed(8)
    head = InfoRMHead(6, latent_dim=4, bias=True, backend="reference").double().train()
    noise = torch.randn(5, 4, dtype=torch.float64)

    def outputs(x):
        out = head(x, noise=noise)
        return out.reward, out.mu, out.logvar, out.z, out.kl

    assert torch.autograd.gradcheck(outputs, (torch.randn(5, 6, dtype=torch.float64, requires_grad=True),))


def test_bf16_input_accumulates_in_float32():
    torch.manual_seed(7)
    head = InfoRMHead(64, latent_dim=16).eval()
    x = torch.randn(8, 64)
    out16 = head(x.to(torch.bfloat16))
    out32 = head(x.to(torch.bfloat16).float())
    assert out16.reward.dtype == torch.float32 and out16.mu.dtype == torch.float32
    torch.testing.assert_close(out16.reward, out32.reward)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda h: h(torch.randn(3, 15)), "hidden_states"),
        (lambda h: h(torch.randn(3)), "hidden_states"),
        (lambda h: h(torch.randn(2, 3, 4, 16)), "hidden_states"),
        (lambda h: h(torch.randint(0, 3, (3, 16))), "hidden_states"),
        (lambda h: h(torch.randn(2, 5, 16), attention_mask=torch.ones(2, 4)), "attention_mask"),
        (lambda h: h(torch.randn(2, 5, 16), attention_mask=torch.tensor([[1] * 5, [0] * 5])), "attention_mask"),
        (lambda h: h(torch.randn(2, 16), attention_mask=torch.ones(2, 1)), "attention_mask"),
        (lambda h: h.train()(torch.randn(2, 16), noise=torch.randn(2, 3)), "noise"),
        (lambda h: h.pairwise_loss(torch.randn(3, 16), torch.randn(4, 16)), "chosen_hidden and rejected_hidden"),
        (lambda h: h.pairwise_loss(torch.randn(3, 16), torch.randn(3, 17)), "rejected_hidden"),
        (lambda h: h.pairwise_loss(torch.randn(0, 16), torch.randn(0, 16)), "chosen_hidden"),
        (lambda h: h.pairwise_loss(torch.randn(3, 16), torch.randn(3, 16), beta=-1.0), "beta"),
        (lambda h: h.pairwise_loss(torch.randn(3, 16), torch.randn(3, 16), margin=torch.zeros(2)), "margin"),
        (
            lambda h: h.pairwise_loss(
                torch.randn(2, 4, 16), torch.randn(2, 4, 16),
                chosen_attention_mask=torch.ones(2, 4), rejected_attention_mask=torch.zeros(2, 4),
            ),
            "rejected_attention_mask",
        ),
    ],
)
def test_bad_input_names_the_argument(make, match):
    head = InfoRMHead(16, latent_dim=4)
    with pytest.raises(ValueError, match=match):
        make(head)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"decoder": "conv"}, "decoder"),
        ({"kl": "mean"}, "kl"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InfoRMHead(16, **kwargs)


def test_hidden_size_must_be_positive():
    with pytest.raises(ValueError, match="hidden_size"):
        InfoRMHead(0)


def test_reference_last_token_indices():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert reference.last_token_indices(mask).tolist() == [1, 3, 3, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_hidden_states_are_refused_unless_turned_off(bad, dtype):
    """NaN / Inf hidden states used to give NaN rewards and loss without a word."""
    head = InfoRMHead(12, 4)
    hidden = torch.randn(3, 5, 12).to(dtype)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    hidden[1, 2, 7] = bad  # row 1's last real token
    with pytest.raises(ValueError, match=r"hidden_states: contains 1 NaN/Inf value\(s\), first at index \(1, 7\)"):
        head(hidden, attention_mask=mask)
    with pytest.raises(ValueError, match="rejected_hidden: contains 1 NaN/Inf"):
        head.pairwise_loss(hidden.nan_to_num(0.0, 0.0, 0.0), hidden, chosen_attention_mask=mask, rejected_attention_mask=mask)
    with pytest.raises(ValueError, match="hidden_states: contains"):
        head.latents(hidden, attention_mask=mask)
    hidden[1, 4, 0] = bad  # a padding position: never read, so never refused
    hidden[1, 2, 7] = 0.0
    assert head(hidden, attention_mask=mask).reward.isfinite().all()
    hidden[1, 2, 7] = bad
    unchecked = InfoRMHead(12, 4, check_finite=False)
    unchecked.load_state_dict(head.state_dict())
    assert not unchecked(hidden, attention_mask=mask).reward[1].isfinite()

