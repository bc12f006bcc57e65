"""``InfoRMConfig``, the configuration of ``inform_fast.modeling.InfoRMForRewardModel``, and how
the Transformers Auto classes find it.

This module imports only Transformers' configuration code (not its model code), so that
``import inform_fast`` can register the "inform" model type cheaply:

* ``import inform_fast`` registers ``InfoRMConfig`` with ``AutoConfig`` as soon as Transformers'
  Auto-config module is imported (at once if it already is; see ``inform_fast._auto``);
* constructing an ``InfoRMConfig`` (as ``AutoConfig.from_pretrained`` does) imports
  ``inform_fast.modeling``, which registers ``InfoRMForRewardModel`` with ``AutoModel`` and
  ``AutoModelForSequenceClassification``: both return the full reward model (backbone + head,
  ``logits`` [B, 1]), never the bare backbone;
* ``save_pretrained`` writes ``auto_map`` into config.json and a two-line ``inform_fast_auto.py``
  next to it that imports these classes from the installed package, so a process that never
  imported inform_fast loads the folder with ``trust_remote_code=True`` (Transformers' own
  message asks for that flag otherwise; the file tells what to import).
"""
from __future__ import annotations

import os
import warnings
from typing import Union

from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from inform_fast import reference
from inform_fast.head import DECODERS
from inform_fast.validation import check_beta, check_choice, check_normalization, check_positive_int

__all__ = ["InfoRMConfig", "AUTO_MAP", "AUTO_MODULE"]

# Backbones whose attention is bidirectional: a packed batch needs a block mask without the
# causal triangle. Everything else is treated as a causal decoder.
_BIDIRECTIONAL = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "modernbert", "camembert", "albert", "mpnet"}

AUTO_MODULE = "inform_fast_auto"
AUTO_MAP = {
    "AutoConfig": f"{AUTO_MODULE}.InfoRMConfig",
    "AutoModel": f"{AUTO_MODULE}.InfoRMForRewardModel",
    "AutoModelForSequenceClassification": f"{AUTO_MODULE}.InfoRMForRewardModel",
}
_AUTO_MODULE_SOURCE = '''"""Loads an inform_fast InfoRM reward model through the Transformers Auto classes.

Written by inform_fast next to config.json. Transformers runs this file only when loading with
trust_remote_code=True; `import inform_fast` before loading is enough instead. It needs the
inform-fast package installed (pip install inform-fast).
"""
from inform_fast.modeling import InfoRMConfig, InfoRMForRewardModel  # noqa: F401
'''


class InfoRMConfig(PreTrainedConfig):
    r"""Configuration of ``InfoRMForRewardModel``.

    Args:
        backbone_config: the backbone's config (``PreTrainedConfig``, or a dict with its
            ``model_type``; None gives a default Llama config). Saved as a nested sub-config.
        latent_dim: L, the information-bottleneck size (default 128).
        decoder: "linear" (default; foldable by ``export_sequence_classifier``) or "mlp".
        decoder_activation: the "mlp" decoder's activation: "silu" (default), another name in
            ``inform_fast.reference.ACTIVATIONS``, or "backbone": the backbone's own
            (``hidden_act`` / ``activation_function``: GELU for BERT, GPT-2, Pythia), as the
            authors' code does; stored resolved.
        head_bias: biases in the head's encoder and decoder.
        beta: default KL weight of ``pairwise_loss``.
        kl: "standard" (default) or "authors" (the authors' averaged-KL variant and loss weighting,
            for reproduction: with it, beta = the authors' kl_loss_coef gives their loss).
        reward_mean, reward_std: serving normalisation, reward = (raw - mean) / std (identity by
            default; ``fit_reward_normalization`` sets them).
    """

    model_type = "inform"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    backbone_config: Union[dict, PreTrainedConfig, None] = None
    latent_dim: int = 128
    decoder: str = "linear"
    decoder_activation: str = "silu"
    head_bias: bool = False
    beta: float = 0.1
    kl: str = "standard"
    reward_mean: float = 0.0
    reward_std: float = 1.0

    def __post_init__(self, **kwargs):
        check_positive_int("latent_dim", self.latent_dim)
        check_choice("decoder", self.decoder, DECODERS)
        if self.decoder_activation == "backbone":
            self.decoder_activation = _backbone_activation(self.backbone_config)
        check_choice("decoder_activation", self.decoder_activation, tuple(reference.ACTIVATIONS))
        if self.decoder == "linear" and self.decoder_activation != "silu":
            raise ValueError(f"decoder_activation: {self.decoder_activation!r} given, but only decoder='mlp' has an activation")
        check_choice("kl", self.kl, reference.KL_MODES)
        check_beta(self.beta)
        self.head_bias = bool(self.head_bias)
        self.reward_mean, self.reward_std = check_normalization(self.reward_mean, self.reward_std)
        # A reward model has one output, like a sequence-classification model with num_labels=1.
        kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)
        if self.problem_type is None:
            self.problem_type = "regression"
        self.auto_map = dict(AUTO_MAP)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing to do: ``save_pretrained`` writes the ``auto_map`` and its module itself (a
        registration would make Transformers copy this package's source file into every save)."""

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs):
        """Save config.json (with ``auto_map``) and ``inform_fast_auto.py`` (see the module docstring)."""
        os.makedirs(save_directory, exist_ok=True)
        write_auto_module(save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The backbone's config. ``decoder`` here is the head's decoder type (a string), which
        transformers' default lookup would mistake for a text sub-config; Trainer and TRL read
        pad/eos ids from what this returns."""
        return self.backbone_config

    @property
    def hidden_size(self) -> int:
        """The backbone's hidden size H."""
        return self.backbone_config.hidden_size

    @property
    def backbone_is_bidirectional(self) -> bool:
        return self.backbone_config.model_type in _BIDIRECTIONAL


def _backbone_activation(backbone_config) -> str:
    config = backbone_config if not isinstance(backbone_config, dict) else None
    values = backbone_config if isinstance(backbone_config, dict) else {}
    for key in ("hidden_act", "activation_function", "hidden_activation"):
        name = getattr(config, key, None) if config is not None else values.get(key)
        if isinstance(name, str):
            return name
    raise ValueError("decoder_activation: 'backbone' given, but the backbone config names no activation "
                     "(hidden_act / activation_function); name one, e.g. 'gelu'")


def write_auto_module(directory: Union[str, os.PathLike]) -> None:
    """Write ``inform_fast_auto.py`` into ``directory`` (left alone if a different file has that name)."""
    path = os.path.join(os.fspath(directory), AUTO_MODULE + ".py")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() != _AUTO_MODULE_SOURCE:
                warnings.warn(f"{path} exists and was not written by inform_fast: left as it is; loading this folder "
                              "with trust_remote_code=True runs that file", stacklevel=3)
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(_AUTO_MODULE_SOURCE)
    os.replace(temporary, path)


AutoConfig.register("inform", InfoRMConfig, exist_ok=True)
