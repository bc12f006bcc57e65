"""The registered ops (``torch.ops.inform_fast``): their registration (``torch.library.opcheck``:
schema, fake implementation, autograd, AOT dispatch), their reference backward against autograd of
the reference forward, and ``torch.compile(fullgraph=True)`` of the head and of its loss with no
graph break on CPU, matching eager."""
import pytest
import torch

from inform_fast import InfoRMHead, reference
from inform_fast.ops import mahalanobis as mahalanobis_ops
from inform_fast.ops import vib_head as ops
from inform_fast.testing import requires_triton_interpreter


def randn(*shape, dtype=torch.float64, seed=0, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(grad)


def loss_inputs(pairs=5, hidden=13, latent=6, dtype=torch.float64, bias=True, explicit_noise=True, margin=True):
    """Positional arguments of torch.ops.inform_fast.linear_pairwise_loss (odd sizes, float64)."""
    acc = reference.accumulation_dtype(dtype)
    return (
        randn(pairs, hidden, dtype=dtype, seed=1, grad=True), randn(pairs, hidden, dtype=dtype, seed=2, grad=True),
        (randn(2 * latent, hidden, dtype=dtype, seed=3) * hidden ** -0.5).requires_grad_(),
        randn(2 * latent, dtype=dtype, seed=4, grad=True) if bias else None,
        randn(1, latent, dtype=dtype, seed=5, grad=True), randn(1, dtype=dtype, seed=6, grad=True) if bias else None,
        randn(pairs, latent, dtype=acc, seed=7) if explicit_noise else None,
        randn(pairs, latent, dtype=acc, seed=8) if explicit_noise else None,
        randn(pairs, dtype=acc, seed=9) if margin else None,
        None if explicit_noise else torch.tensor([1234]),
    )


# ------------------------------------------------------------------------------------------------
# the reference backward is the gradient of the reference forward


@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
@pytest.mark.parametrize("center", [0.0, 0.6])
def test_reference_loss_gradient_is_autograd_of_the_formula(kl_mode, center):
    chosen, rejected, w, b, wd, bd, noise_w, noise_l, margin, _ = loss_inputs()
    upstream = -1.7
    result = ops.linear_pairwise_loss(chosen, rejected, w, b, wd, bd, noise_chosen=noise_w, noise_rejected=noise_l,
                                      beta=0.3, margin=margin, kl_mode=kl_mode, center_rewards_coefficient=center,
                                      backend="reference")
    params = (chosen, rejected, w, b, wd, bd)
    got = torch.autograd.grad(result.terms.loss * upstream, params)
    # the formula composed from the reference's forward pieces, differentiated by autograd
    mu_w, logvar_w, z_w, kl_w = reference.vib_encode(chosen, w, b, noise_w, kl_mode)
    mu_l, logvar_l, z_l, kl_l = reference.vib_encode(rejected, w, b, noise_l, kl_mode)
    r_w, r_l = reference.decode_linear(z_w, wd, bd), reference.decode_linear(z_l, wd, bd)
    expected = reference.pairwise_loss_from_rewards(r_w, r_l, kl_w, kl_l, 0.3, margin, kl_mode, center)
    want = torch.autograd.grad(expected.loss * upstream, params)
    torch.testing.assert_close(result.terms.loss, expected.loss, rtol=1e-12, atol=1e-12)
    for name, a, e in zip(("chosen", "rejected", "encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias"), got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)
    assert result.terms.kl.item() == pytest.approx(expected.kl.item(), rel=1e-12)
    torch.testing.assert_close(result.mu, torch.cat([mu_w, mu_l]).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
def test_reference_encoder_gradient_is_autograd_of_the_formula(kl_mode):
    x, w, b = randn(7, 11, seed=1, grad=True), randn(8, 11, seed=2, grad=True), randn(8, seed=3, grad=True)
    noise = randn(7, 4, seed=4)
    ups = [randn(7, 4, seed=5 + i) for i in range(3)] + [randn(7, seed=9)]
    out = ops.vib_encode(x, w, b, noise=noise, kl_mode=kl_mode, backend="reference")
    want = torch.autograd.grad(sum((o * u).sum() for o, u in zip(reference.vib_encode(x, w, b, noise, kl_mode), ups)), (x, w, b))
    got = torch.autograd.grad(sum((o * u).sum() for o, u in zip(out, ups)), (x, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_ops_are_deterministic_given_the_seed():
    # sampling draws the seed outside the op (torch.manual_seed reproduces it); the op itself is
    # a pure function of its inputs, as the compiler and opcheck assume
    args = loss_inputs(explicit_noise=False)
    first = torch.ops.inform_fast.linear_pairwise_loss(*args, "standard", 0.1, 0.0, True, "reference", None)
    again = torch.ops.inform_fast.linear_pairwise_loss(*args, "standard", 0.1, 0.0, True, "reference", None)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    one = ops.vib_encode(args[0], args[2], args[3], sample=True, backend="reference")
    torch.manual_seed(3)
    two = ops.vib_encode(args[0], args[2], args[3], sample=True, backend="reference")
    assert torch.equal(one[2], two[2]) and not torch.equal(one[2], one[0])


@pytest.mark.parametrize("change, message", [
    (dict(beta=-1.0), "beta: expected a finite number >= 0"),
    (dict(beta=float("nan")), "beta:"),
    (dict(margin=torch.zeros(4)), "margin: expected a scalar or shape"),
    (dict(kl_mode="paper"), "kl_mode: expected one of"),
    (dict(noise_chosen=torch.zeros(5, 5)), "noise_chosen: expected shape"),
    (dict(center_rewards_coefficient=float("inf")), "center_rewards_coefficient:"),
])
def test_functional_loss_names_the_bad_argument(change, message):
    chosen, rejected, w, b, wd, bd = loss_inputs()[:6]
    with pytest.raises(ValueError, match=message):
        ops.linear_pairwise_loss(chosen, rejected, w, b, wd, bd, **change)


# ------------------------------------------------------------------------------------------------
# registration: torch.library.opcheck

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)
    assert all(value == "SUCCESS" for value in result.values()), result


@pytest.mark.parametrize("explicit_noise, bias", [(True, True), (False, False)])
def test_opcheck_linear_pairwise_loss(explicit_noise, bias):
    args = loss_inputs(explicit_noise=explicit_noise, bias=bias, margin=bias)
    _opcheck(torch.ops.inform_fast.linear_pairwise_loss.default,
             args + ("authors" if bias else "standard", 0.2, 0.5 if bias else 0.0, True, "reference", None))
    chosen, rejected, w = args[:3]
    grad = randn(2 * chosen.shape[0], w.shape[0], seed=11)
    _opcheck(torch.ops.inform_fast.linear_pairwise_loss_backward.default,
             (torch.tensor(0.7, dtype=torch.float64), chosen.detach(), rejected.detach(), w.detach(), grad, True, bias,
              "reference", None))


@pytest.mark.parametrize("explicit_noise", [True, False])
def test_opcheck_vib_encode(explicit_noise):
    x, w, b = randn(6, 9, seed=1, grad=True), randn(10, 9, seed=2, grad=True), randn(10, seed=3, grad=True)
    noise, seed = (randn(6, 5, seed=4), None) if explicit_noise else (None, torch.tensor([77]))
    _opcheck(torch.ops.inform_fast.vib_encode.default, (x, w, b, noise, seed, "standard", "reference", None))
    mu, logvar = randn(6, 5, seed=5), randn(6, 5, seed=6)
    grads = (randn(6, 5, seed=7), randn(6, 5, seed=8), randn(6, 5, seed=9), randn(6, seed=10))
    _opcheck(torch.ops.inform_fast.vib_encode_backward.default,
             grads + (x.detach(), w.detach(), mu, logvar, noise, seed, "authors", True, True, "reference", None))


def test_opcheck_mahalanobis():
    x = randn(40, 6, dtype=torch.float32, seed=1)
    mean, whiten = randn(6, dtype=torch.float32, seed=2), randn(6, 6, dtype=torch.float32, seed=3)
    _opcheck(torch.ops.inform_fast.mahalanobis_sq.default, (x, mean, whiten, "ieee", "reference"))
    expected = ((x - mean) @ whiten).square().sum(1)
    torch.testing.assert_close(mahalanobis_ops.mahalanobis_sq(x, mean, whiten), expected, rtol=1e-5, atol=1e-5)


@requires_triton_interpreter()
def test_opcheck_triton_backend():
    # the Triton kernels behind the same registration (interpreted on CPU tensors)
    args = loss_inputs(pairs=3, hidden=7, latent=3, explicit_noise=False)
    _opcheck(torch.ops.inform_fast.linear_pairwise_loss.default, args + ("standard", 0.2, 0.3, True, "triton", None))
    x64 = randn(9, 4, seed=1)
    d2 = mahalanobis_ops.mahalanobis_sq(x64, randn(4, seed=2), torch.eye(4, dtype=torch.float64), backend="triton")
    assert d2.dtype == torch.float64  # float64 goes to the exact reference, not the fp32 kernel
    torch.testing.assert_close(d2, (x64 - randn(4, seed=2)).square().sum(1))


# ------------------------------------------------------------------------------------------------
# torch.compile: no graph break, same numbers


def _breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explanation.graph_count >= 1
    return explanation.graph_break_count


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_head_and_loss_trace_without_graph_breaks(training, decoder):
    torch.manual_seed(0)
    head = InfoRMHead(24, latent_dim=6, decoder=decoder, bias=True).train(training)
    states = torch.randn(4, 5, 24)
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[1, :2] = 0
    chosen, rejected = torch.randn(3, 24, requires_grad=True), torch.randn(3, 24, requires_grad=True)
    assert _breaks(head, states, mask) == 0
    assert _breaks(head.pairwise_loss, chosen, rejected, beta=0.2, margin=0.1) == 0
    assert _breaks(head, torch.cat([chosen, rejected]), num_pairs=3, center_rewards_coefficient=0.1) == 0
    torch._dynamo.reset()


@pytest.mark.parametrize("kl_mode", ["standard", "authors"])
def test_compiled_loss_matches_eager(kl_mode):
    # fullgraph=True fails on any graph break; the AOT backend traces forward and backward through
    # the fake implementations and the registered backward (no C++ toolchain needed)
    torch.manual_seed(1)
    head = InfoRMHead(19, latent_dim=5, bias=True, kl=kl_mode).train()
    chosen, rejected = torch.randn(7, 19, requires_grad=True), torch.randn(7, 19, requires_grad=True)
    noise_w, noise_l = torch.randn(7, 5), torch.randn(7, 5)
    margin = torch.linspace(-0.5, 0.5, 7)

    def step(chosen, rejected):
        out = head.pairwise_loss(chosen, rejected, beta=0.3, margin=margin, noise_chosen=noise_w,
                                 noise_rejected=noise_l, center_rewards_coefficient=0.2)
        return out.loss, out.reward_chosen, out.mu

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        head.zero_grad()
        chosen.grad = rejected.grad = None
        loss, rewards, mu = fn(chosen, rejected)
        (loss * 1.3).backward()
        results.append([loss, rewards, mu, chosen.grad, head.encoder.weight.grad, head.decoder.bias.grad])
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_compiled_head_forward_matches_eager():
    torch.manual_seed(2)
    head = InfoRMHead(16, latent_dim=4, bias=True).eval()
    states = torch.randn(3, 6, 16)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    eager, traced = head(states, mask), compiled(states, mask)
    for name in eager._fields:
        torch.testing.assert_close(getattr(traced, name), getattr(eager, name), msg=name)
    torch._dynamo.reset()


def test_compiled_head_trains_in_the_reward_model_step():
    # what a compiled training step sees: the head's pair-mode forward, backward through the
    # registered autograd, same gradients as eager
    torch.manual_seed(3)
    head = InfoRMHead(12, latent_dim=3, bias=False).eval()  # z = mu: no sampling difference
    rows = torch.randn(8, 12)
    grads = []
    torch._dynamo.reset()
    for fn in (head, torch.compile(head, fullgraph=True, backend="aot_eager")):
        head.zero_grad()
        fn(rows, num_pairs=4, beta=0.1).loss.backward()
        grads.append(head.encoder.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    torch._dynamo.reset()



def test_reward_model_training_step_traces_whole():
    # the model users train: a Transformers backbone and the head in pair mode traced as one
    # graph (fullgraph=True raises on any break), the same loss and gradients as eager
    from inform_fast.modeling import InfoRMForRewardModel
    from inform_fast.tiny import tiny_llama, tiny_tokenizer

    torch.manual_seed(4)
    vocab = len(tiny_tokenizer())
    model = InfoRMForRewardModel.from_backbone(tiny_llama(vocab, hidden_size=16, layers=1), latent_dim=5).eval()  # z = mu
    ids = torch.randint(4, vocab, (6, 7))
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[4, :3] = 0

    def step(ids, mask):
        return model(ids, attention_mask=mask, num_pairs=3, margin=0.2, center_rewards_coefficient=0.1).loss

    torch._dynamo.reset()
    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        model.zero_grad()
        loss = fn(ids, mask)
        loss.backward()
        results.append((loss.detach(), model.head.encoder.weight.grad.clone(),
                        model.backbone.embed_tokens.weight.grad.clone()))
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
