"""Options for reproducing the authors' InfoRM (issue 12 item 10): ``kl="authors"`` gives their loss
at their coefficient, and the MLP decoder can use the backbone's activation as theirs does.

The authors' code (miaoyuchun/InfoRM, commit 14690e0, 2025-10), in our words:
openrlhf/models/model_inform.py computes, at each sequence's last token, mu and logvar, averages
both over the L latent dimensions, applies the one-dimensional KL -0.5 (1 + lv - m^2 - e^lv) per
row and takes ``kl_loss = mean over all 2B rows`` (chosen and rejected alike); its MLP decoder is
``down(ACT2FN[config.hidden_act](gate(z)) * up(z))``. openrlhf/trainer/rm_trainer.py then uses
``loss = preference_loss + kl_loss * kl_loss_coef``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inform_fast import reference
from inform_fast.head import InfoRMHead

_spec = importlib.util.spec_from_file_location("_modeling_tests", Path(__file__).with_name("test_modeling.py"))
_helpers = sys.modules.setdefault("_modeling_tests", importlib.util.module_from_spec(_spec))
if not hasattr(_helpers, "backbone_config"):
    _spec.loader.exec_module(_helpers)
backbone_config = _helpers.backbone_config  # tiny configs of each family


def authors_loss(head: InfoRMHead, chosen, rejected, noise_chosen, noise_rejected, kl_loss_coef):
    """Their training loss on pooled rows [B, H], float64, written from their code's steps."""
    latent = head.latent_dim
    rows = torch.cat([chosen, rejected])  # their batches put chosen before rejected
    noise = torch.cat([noise_chosen, noise_rejected])
    encoded = rows @ head.encoder.weight.double().T
    mu, logvar = encoded[:, :latent], encoded[:, latent:]
    z = mu + logvar.div(2).exp() * noise
    values = z @ head.decoder.weight.double().reshape(-1)
    reward_chosen, reward_rejected = values.chunk(2)
    mu_mean, logvar_mean = mu.mean(-1), logvar.mean(-1)
    kl_loss = (-0.5 * (1 + logvar_mean - mu_mean.pow(2) - logvar_mean.exp())).mean()
    preference_loss = -F.logsigmoid(reward_chosen - reward_rejected).mean()
    return preference_loss + kl_loss * kl_loss_coef, kl_loss


@pytest.mark.parametrize("pairs, hidden, latent", [(5, 24, 7), (13, 33, 16)])
def test_authors_mode_gives_their_loss_at_their_coefficient(pairs, hidden, latent):
    torch.manual_seed(pairs)
    head = InfoRMHead(hidden, latent_dim=latent, kl="authors").double().train()
    with torch.no_grad():
        head.encoder.weight.normal_(0.0, 0.3)
    chosen, rejected = torch.randn(pairs, hidden, dtype=torch.float64), torch.randn(pairs, hidden, dtype=torch.float64)
    noise_w, noise_l = torch.randn(pairs, latent, dtype=torch.float64), torch.randn(pairs, latent, dtype=torch.float64)
    coef = 0.1  # their kl_loss_coef default
    expected, their_kl = authors_loss(head, chosen, rejected, noise_w, noise_l, coef)
    ours = head.pairwise_loss(chosen, rejected, beta=coef, noise_chosen=noise_w, noise_rejected=noise_l)
    assert float(ours.loss.detach()) == pytest.approx(float(expected), rel=1e-12)
    assert float(ours.kl) == pytest.approx(float(their_kl), rel=1e-12)  # the logged KL is their kl_loss
    # the same through the reward model's training loss (the trainers' path)
    from inform_fast.integrations.hf_trainer import inform_batch_loss
    from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel

    model = InfoRMForRewardModel(InfoRMConfig(backbone_config=backbone_config("llama"), latent_dim=latent, kl="authors", beta=coef)).eval()
    ids = torch.randint(3, 100, (2 * pairs, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        loss, metrics, _ = inform_batch_loss(model, batch)
        pooled = model.backbone(ids).last_hidden_state[:, -1].double()
        zeros = torch.zeros(pairs, latent, dtype=torch.float64)
        head = model.head.double()
        expected, their_kl = authors_loss(head, pooled[:pairs], pooled[pairs:], zeros, zeros, coef)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5) and metrics["kl"] == pytest.approx(float(their_kl), rel=1e-5)


def test_standard_mode_keeps_the_spec_weighting():
    torch.manual_seed(0)
    head = InfoRMHead(12, latent_dim=5).double().eval()
    chosen, rejected = torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    out = head.pairwise_loss(chosen, rejected, beta=0.3)
    kl_w, kl_l = head(chosen).kl, head(rejected).kl
    assert float(out.kl) == pytest.approx(float((kl_w + kl_l).mean()), rel=1e-12)


@pytest.mark.parametrize("name", sorted(reference.ACTIVATIONS))
def test_decoder_activations_are_transformers_own(name):
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(reference.ACTIVATIONS[name](x), ACT2FN[name](x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family, expected", [("llama", "silu"), ("gpt2", "gelu_new"), ("gpt_neox", "gelu"), ("bert", "gelu")])
def test_mlp_decoder_can_use_the_backbones_activation(tmp_path, family, expected):
    from transformers.activations import ACT2FN

    from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel

    torch.manual_seed(1)
    config = InfoRMConfig(backbone_config=backbone_config(family), latent_dim=6, decoder="mlp", decoder_activation="backbone")
    assert config.decoder_activation == expected  # stored resolved
    model = InfoRMForRewardModel(config).double().eval()
    decoder = model.head.decoder
    with torch.no_grad():
        for layer in (decoder.gate_proj, decoder.up_proj, decoder.down_proj):
            layer.weight.normal_()
        z = torch.randn(9, 6, dtype=torch.float64) * 2
        want = decoder.down_proj(ACT2FN[expected](decoder.gate_proj(z)) * decoder.up_proj(z)).squeeze(-1)
        torch.testing.assert_close(model.head.decode(z), want, rtol=1e-12, atol=1e-12)
    model.save_pretrained(tmp_path / "rm")
    assert InfoRMForRewardModel.from_pretrained(tmp_path / "rm").head.decoder.activation == expected
    silu = InfoRMConfig(backbone_config=backbone_config(family), latent_dim=6, decoder="mlp")
    assert silu.decoder_activation == "silu"  # the default stays SiLU
    with pytest.raises(ValueError, match="decoder_activation"):
        InfoRMConfig(backbone_config=backbone_config(family), latent_dim=6, decoder="mlp", decoder_activation="gelu_typo")
    with pytest.raises(ValueError, match="decoder_activation.*only decoder='mlp'"):
        InfoRMConfig(backbone_config=backbone_config(family), latent_dim=6, decoder_activation="gelu")
