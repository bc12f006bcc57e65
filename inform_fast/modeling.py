"""The Hugging Face InfoRM reward model: any ``AutoModel`` backbone + ``InfoRMHead``.

Auto classes: after ``import inform_fast`` (nothing more), ``AutoConfig``, ``AutoModel`` and
``AutoModelForSequenceClassification`` load a saved InfoRM folder, and both model classes return
this ``InfoRMForRewardModel`` (backbone + head; ``logits`` [B, 1] is the reward), not the bare
backbone. A process that never imports inform_fast loads it with ``trust_remote_code=True``
(``inform_fast.configuration`` explains how). To serve without our code, fold the head into a
stock checkpoint with ``inform_fast.export.export_sequence_classifier(model, folder)``.

Training: ``forward(..., num_pairs=P)`` returns the InfoRM loss in ``loss`` (chosen rows first,
then rejected); the trainers (``inform_fast.integrations``) and ``inform-fast train`` read it.

Batches the model takes:

* padded: ``input_ids`` [B, T] + ``attention_mask`` [B, T] (left or right padding, pad == eos is
  fine: pooling reads the mask, never the pad id). Position ids are derived from the mask, so a row
  gets the same reward whatever its padding.
* packed (padding-free): ``input_ids`` [1, T] + ``position_ids`` [1, T] restarting at 0 for every
  sequence and no ``attention_mask``; one reward per packed sequence. With flash-attn 2,
  Transformers runs varlen attention from the position ids. With SDPA / eager the row is unpacked
  into a right-padded batch (``packed_fallback = "repad"``, the default: cheaper than T^2
  attention) or kept packed with a block-diagonal 4-D mask (``packed_fallback = "block_mask"``).

PEFT / LoRA: adapters on the backbone, the head trained in full and saved with the adapter:
``LoraConfig(target_modules=[...], modules_to_save=["head"])``, or any PEFT config passed through
``inform_fast.integrations.hf_trainer.inform_peft_config`` (``InfoRMRewardTrainer`` does it for its
``peft_config``). The head reads its layers' weights directly, so it refuses to run with an adapter
on one of them (``InfoRMHead.check_layers``) rather than silently bypass it.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from inform_fast import packing, reference
from inform_fast.configuration import InfoRMConfig, check_normalization
from inform_fast.head import InfoRMHead, InfoRMLossOutput, join_pair_noise
from inform_fast.validation import check_attention_mask, check_positive_int

__all__ = ["InfoRMConfig", "InfoRMForRewardModel", "InfoRMRewardModelOutput", "default_attn_implementation"]


@dataclass
class InfoRMRewardModelOutput(ModelOutput):
    """Output of ``InfoRMForRewardModel.forward`` for N sequences (float32).

    logits: [N, 1] the (normalised) reward, shaped like a sequence-classification model's output.
    rewards: [N] the same values. mu, logvar: [N, L] the latent.

    Scoring (no ``num_pairs``): z [N, L] (z = mu in eval mode), kl [N] KL(q(z|h) || N(0, I));
    ``loss`` is None.

    Pair mode (``num_pairs=P``, N = 2P: the chosen sequences, then the rejected ones): ``loss`` []
    the InfoRM loss on the raw rewards, and its terms, without gradients: ``preference_loss``,
    ``kl_loss`` (mean over pairs of KL_w + KL_l, half of it with kl="authors"), ``accuracy``,
    ``reward_margin`` (all []), ``reward_chosen`` / ``reward_rejected`` [P] (raw); mu and logvar
    carry no gradient; z and kl are None (the fused loss does not produce them).
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    rewards: Optional[torch.Tensor] = None
    mu: Optional[torch.Tensor] = None
    logvar: Optional[torch.Tensor] = None
    z: Optional[torch.Tensor] = None
    kl: Optional[torch.Tensor] = None
    preference_loss: Optional[torch.Tensor] = None
    kl_loss: Optional[torch.Tensor] = None
    accuracy: Optional[torch.Tensor] = None
    reward_margin: Optional[torch.Tensor] = None
    reward_chosen: Optional[torch.Tensor] = None
    reward_rejected: Optional[torch.Tensor] = None


def default_attn_implementation(device: Optional[Union[str, torch.device]] = None) -> str:
    """"flash_attention_2" when flash-attn is importable and a CUDA device is used, else "sdpa"."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class InfoRMForRewardModel(PreTrainedModel):
    """InfoRM reward model: ``backbone`` (an ``AutoModel``) -> last non-padding token -> ``head``.

    Build from pretrained weights with ``from_backbone``; save / load with ``save_pretrained`` /
    ``from_pretrained`` (safetensors).
    """

    config_class = InfoRMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    # How packed batches run without flash attention: "repad" (default) unpacks them into a
    # right-padded batch (n * max_len^2 attention); "block_mask" keeps the packed row and passes a
    # block-diagonal 4-D mask (T^2 attention and mask memory). Both give the same rewards.
    packed_fallback = "repad"

    def __init__(self, config: InfoRMConfig, backbone: Optional[PreTrainedModel] = None):
        super().__init__(config)
        if backbone is None:
            backbone = AutoModel.from_config(config.backbone_config)
        self.backbone = backbone
        self.head = InfoRMHead(
            config.hidden_size, latent_dim=config.latent_dim, decoder=config.decoder, bias=config.head_bias, kl=config.kl,
            decoder_activation=config.decoder_activation,
        )
        # FSDP auto-wrap and device_map must not split the backbone's layers.
        self._no_split_modules = list(getattr(backbone, "_no_split_modules", None) or [])
        self.post_init()

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing to do: the saved config carries the ``auto_map`` (see ``inform_fast.configuration``)."""

    def _init_weights(self, module):
        # The backbone initialises itself (its own _init_weights); this only sees the head.
        if isinstance(module, nn.Linear):
            std = getattr(self.config.backbone_config, "initializer_range", None) or 0.02
            from transformers import initialization as init

            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_backbone(
        cls,
        name_or_path_or_model: Union[str, os.PathLike, PreTrainedModel],
        latent_dim: int = 128,
        decoder: str = "linear",
        beta: float = 0.1,
        kl: str = "standard",
        head_bias: bool = False,
        dtype: Optional[torch.dtype] = None,
        decoder_activation: str = "silu",
        attn_implementation: Optional[str] = None,
        **kwargs,
    ) -> "InfoRMForRewardModel":
        """A reward model on pretrained backbone weights with a freshly initialised head.

        Args:
            name_or_path_or_model: a hub name or local path (loaded with ``AutoModel.from_pretrained``),
                or a ``PreTrainedModel``; a ``*ForCausalLM`` / ``*ForSequenceClassification`` is
                reduced to its base model (the LM / classifier head is dropped).
            dtype: weights dtype when loading from a path (e.g. torch.bfloat16); the head is cast too.
            decoder_activation: the "mlp" decoder's activation ("silu", or "backbone" for the
                backbone's own as in the authors' code; see ``InfoRMConfig``).
            attn_implementation: passed through; default "flash_attention_2" when flash-attn is
                installed and CUDA is used, else "sdpa" (falling back to "eager" for backbones without SDPA).
            kwargs: more ``from_pretrained`` arguments (``device_map``, ``revision``, ...).
        """
        if isinstance(name_or_path_or_model, PreTrainedModel):
            backbone = name_or_path_or_model.base_model
            if attn_implementation is not None:
                backbone.set_attn_implementation(attn_implementation)
        elif isinstance(name_or_path_or_model, nn.Module):
            raise ValueError(
                f"name_or_path_or_model: expected a transformers PreTrainedModel, a name or a path, "
                f"got {type(name_or_path_or_model).__name__}"
            )
        else:
            device_map = kwargs.get("device_map")
            device = device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else None
            requested = attn_implementation or default_attn_implementation(device)
            load = dict(kwargs)
            if dtype is not None:
                load["dtype"] = dtype
            try:
                backbone = AutoModel.from_pretrained(name_or_path_or_model, attn_implementation=requested, **load)
            except (ValueError, ImportError):
                if attn_implementation is not None or requested == "eager":
                    raise
                # The backbone family does not support the automatic choice: use eager attention.
                backbone = AutoModel.from_pretrained(name_or_path_or_model, attn_implementation="eager", **load)
        config = InfoRMConfig(
            backbone_config=copy.deepcopy(backbone.config), latent_dim=latent_dim, decoder=decoder,
            beta=beta, kl=kl, head_bias=head_bias, decoder_activation=decoder_activation,
        )
        # The loaded weights must survive post_init's initialisation pass.
        flagged = []
        for tensor in list(backbone.parameters()) + list(backbone.buffers()):
            if not getattr(tensor, "_is_hf_initialized", False):
                tensor._is_hf_initialized = True
                flagged.append(tensor)
        model = cls(config, backbone=backbone)
        for tensor in flagged:
            del tensor._is_hf_initialized
        model.config.backbone_config = backbone.config
        param = next(backbone.parameters())
        model.head.to(device=param.device, dtype=param.dtype)
        return model

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    # ------------------------------------------------------------------------------------------
    # backbone + pooling

    def _is_flash(self) -> bool:
        impl = getattr(self.backbone.config, "_attn_implementation", None) or ""
        return "flash" in impl

    def _encode(
        self,
        input_ids: Optional[torch.Tensor],
        attention_mask: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        inputs_embeds: Optional[torch.Tensor],
        num_sequences: Optional[int] = None,
        **kwargs,
    ) -> torch.Tensor:
        """Run the backbone and pool: returns [N, H] hidden states at each sequence's last token."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids: pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                raise ValueError(f"input_ids: expected a [B, T] tensor, got {_describe(input_ids)}")
            if input_ids.is_floating_point():
                raise ValueError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
            batch, seq_len = input_ids.shape
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
                raise ValueError(f"inputs_embeds: expected a [B, T, H] tensor, got {_describe(inputs_embeds)}")
            batch, seq_len = inputs_embeds.shape[:2]
        if seq_len == 0:
            raise ValueError("input_ids: sequence length is 0")
        if position_ids is not None and (not isinstance(position_ids, torch.Tensor) or position_ids.shape[-1] != seq_len or position_ids.dim() != 2):
            raise ValueError(f"position_ids: expected shape [B or 1, {seq_len}], got {_describe(position_ids)}")
        embeds = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
        if self._backbone_takes_use_cache():
            # A reward model never decodes further: building a KV cache only costs memory.
            kwargs.setdefault("use_cache", False)

        packed = attention_mask is None and position_ids is not None and batch == 1
        if packed:
            ends = packing.packed_last_token_indices(position_ids)
            if num_sequences is not None and ends.numel() not in (num_sequences, num_sequences + 1):
                raise ValueError(
                    f"position_ids: found {ends.numel()} packed sequences, expected {num_sequences} "
                    f"(or one more for a padding filler)"
                )
            if self._is_flash():
                if self.config.backbone_is_bidirectional:
                    raise ValueError(
                        f"position_ids: packed batches with flash attention are not supported for the "
                        f"bidirectional {self.config.backbone_config.model_type!r} backbone; use sdpa or eager"
                    )
                # Transformers detects the restarts in position_ids and runs varlen flash attention.
                mask = None
            elif self.packed_fallback == "repad" and input_ids is not None:
                # Without varlen attention a packed row costs T^2 attention (and a T^2 mask); the same
                # sequences right-padded cost n * max_len^2 and give the same rewards, so run that.
                ids, mask = _unpack(input_ids[0], position_ids.reshape(-1), ends, self._pad_id())
                return self._encode(ids, mask, None, None, **kwargs)
            else:
                if self.packed_fallback not in ("repad", "block_mask"):
                    raise ValueError(f"packed_fallback: expected 'repad' or 'block_mask', got {self.packed_fallback!r}")
                dtype = self._compute_dtype()
                mask = packing.block_diagonal_mask(
                    position_ids, dtype=dtype, causal=not self.config.backbone_is_bidirectional
                ).to(position_ids.device)
            out = self.backbone(**embeds, attention_mask=mask, position_ids=position_ids, **kwargs)
            hidden = out[0]  # [1, T, H]
            return hidden[0, ends.to(hidden.device)]  # [n, H]

        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=(input_ids if input_ids is not None else inputs_embeds).device)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            raise ValueError(f"attention_mask: expected a [B, T] tensor, got {_describe(attention_mask)}")
        check_attention_mask("attention_mask", attention_mask, batch, seq_len)
        if position_ids is None:
            # Count positions over real tokens only, so left padding does not shift a row's positions.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(**embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        hidden = out[0]  # [B, T, H]
        index = reference.last_token_indices(attention_mask).to(hidden.device)
        return hidden[torch.arange(batch, device=hidden.device), index]  # [B, H]

    def _backbone_takes_use_cache(self) -> bool:
        cached = getattr(self, "_takes_use_cache", None)
        if cached is None:
            cached = "use_cache" in inspect.signature(self.backbone.forward).parameters
            self._takes_use_cache = cached
        return cached

    def _compute_dtype(self) -> torch.dtype:
        return self.get_input_embeddings().weight.dtype

    # ------------------------------------------------------------------------------------------
    # public API

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = True,
        noise: Optional[torch.Tensor] = None,
        num_pairs: Optional[int] = None,
        margin: Optional[Union[torch.Tensor, float]] = None,
        beta: Optional[float] = None,
        center_rewards_coefficient: Optional[float] = None,
        **kwargs,
    ) -> InfoRMRewardModelOutput:
        """Rewards and latents for a padded batch ([N, T] + mask) or a packed one ([1, T] + position
        ids); with ``num_pairs`` also the InfoRM training loss.

        Returns ``InfoRMRewardModelOutput`` with ``logits`` [N, 1] = (raw - reward_mean) / reward_std
        in float32, ``rewards`` [N], ``mu`` / ``logvar`` [N, L], and ``z`` [N, L], ``kl`` [N] when
        scoring. ``noise`` [N, L] fixes the reparameterisation noise in training mode. Extra keyword
        arguments (except ``labels``/``use_cache``, ignored) go to the backbone.

        Pair mode, the one training path of the trainers and ``pairwise_loss``: ``num_pairs=P``
        says the batch holds P chosen sequences then the P rejected ones in the same pair order
        (rows of a padded batch; sequences of a packed row, where a trailing filler sequence is
        ignored). ``loss`` is then the InfoRM loss on the raw head rewards (no serving
        normalisation), computed by the head's fused pairwise op (the Triton kernel on CUDA);
        ``margin`` (None, a float or [P]), ``beta`` (default ``config.beta``) and
        ``center_rewards_coefficient`` (TRL's ``c * mean((r_w + r_l)^2)``, default 0) shape it.
        """
        # Arguments that trainers pass to sequence-classification models but a reward model has no use for.
        for unused in ("labels", "use_cache", "num_items_in_batch", "return_loss"):
            kwargs.pop(unused, None)
        if num_pairs is not None:
            num_pairs = check_positive_int("num_pairs", int(num_pairs) if isinstance(num_pairs, torch.Tensor) else num_pairs)
        pooled = self._encode(input_ids, attention_mask, position_ids, inputs_embeds,
                              num_sequences=None if num_pairs is None else 2 * num_pairs, **kwargs)
        if num_pairs is not None:
            output = self._pair_output(pooled[: 2 * num_pairs], num_pairs, noise, margin, beta, center_rewards_coefficient)
            return output if return_dict is not False else output.to_tuple()
        head_out = self.head(pooled, noise=noise)
        rewards = self._normalize(head_out.reward).float()
        # No output is a view of another tensor: FSDP2 registers its pre-backward hook on the
        # outputs, and an in-place op on a view would silently bypass it (it warns about views).
        # The copies are [B] and [B, L], nothing next to the backbone.
        output = InfoRMRewardModelOutput(
            loss=None, logits=rewards[:, None].clone(), rewards=rewards, mu=_own(head_out.mu),
            logvar=_own(head_out.logvar), z=_own(head_out.z), kl=_own(head_out.kl),
        )
        return output if return_dict is not False else output.to_tuple()

    def _pair_output(self, pooled, num_pairs, noise, margin, beta, center_rewards_coefficient) -> InfoRMRewardModelOutput:
        if pooled.shape[0] != 2 * num_pairs:
            raise ValueError(f"num_pairs: {num_pairs} pairs need {2 * num_pairs} sequences, the batch has {pooled.shape[0]}")
        # through the head's forward, not its weights: DeepSpeed ZeRO-3 gathers them around it
        result = self.head(pooled, noise=noise, num_pairs=num_pairs, beta=self.config.beta if beta is None else beta,
                           margin=margin, center_rewards_coefficient=center_rewards_coefficient or 0.0)
        rewards = self._normalize(torch.cat([result.reward_chosen, result.reward_rejected])).float()
        return InfoRMRewardModelOutput(
            loss=result.loss, logits=rewards[:, None].clone(), rewards=rewards, mu=_own(result.mu),
            logvar=_own(result.logvar), preference_loss=_own(result.preference_loss), kl_loss=_own(result.kl),
            accuracy=_own(result.accuracy), reward_margin=_own(result.reward_margin),
            reward_chosen=_own(result.reward_chosen), reward_rejected=_own(result.reward_rejected),
        )

    def _normalize(self, reward: torch.Tensor) -> torch.Tensor:
        if self.config.reward_mean == 0.0 and self.config.reward_std == 1.0:
            return reward
        return (reward - self.config.reward_mean) / self.config.reward_std

    def pairwise_loss(
        self,
        chosen_input_ids: torch.Tensor,
        chosen_attention_mask: Optional[torch.Tensor],
        rejected_input_ids: torch.Tensor,
        rejected_attention_mask: Optional[torch.Tensor],
        margin: Optional[Union[torch.Tensor, float]] = None,
        beta: Optional[float] = None,
        noise_chosen: Optional[torch.Tensor] = None,
        noise_rejected: Optional[torch.Tensor] = None,
        center_rewards_coefficient: Optional[float] = None,
    ) -> InfoRMLossOutput:
        """InfoRM loss over B pairs with ONE backbone forward over chosen and rejected together
        (``forward`` in pair mode).

        chosen_* and rejected_* are [B, Tw] and [B, Tl] (any padding side; masks None = no padding);
        the shorter side is right-padded to the longer. ``beta`` defaults to ``config.beta``. The
        loss uses the raw head rewards (no serving normalisation). Returns ``InfoRMLossOutput``.
        """
        chosen_attention_mask = _default_mask("chosen", chosen_input_ids, chosen_attention_mask)
        rejected_attention_mask = _default_mask("rejected", rejected_input_ids, rejected_attention_mask)
        if chosen_input_ids.shape[0] != rejected_input_ids.shape[0]:
            raise ValueError(
                f"rejected_input_ids: {rejected_input_ids.shape[0]} rows but chosen_input_ids has "
                f"{chosen_input_ids.shape[0]}; pairs must line up"
            )
        pairs = chosen_input_ids.shape[0]
        if pairs == 0:
            raise ValueError("chosen_input_ids: no pairs (batch size 0)")
        length = max(chosen_input_ids.shape[1], rejected_input_ids.shape[1])
        pad_id = self._pad_id()
        input_ids = torch.cat([_right_pad(chosen_input_ids, length, pad_id), _right_pad(rejected_input_ids, length, pad_id)])
        mask = torch.cat([_right_pad(chosen_attention_mask, length, 0), _right_pad(rejected_attention_mask, length, 0)])
        output = self(input_ids=input_ids, attention_mask=mask, num_pairs=pairs, margin=margin, beta=beta,
                      noise=self._pair_noise(noise_chosen, noise_rejected, pairs, input_ids.device),
                      center_rewards_coefficient=center_rewards_coefficient)
        return _loss_output(output)

    def packed_pairwise_loss(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        num_pairs: int,
        margin: Optional[Union[torch.Tensor, float]] = None,
        beta: Optional[float] = None,
        noise_chosen: Optional[torch.Tensor] = None,
        noise_rejected: Optional[torch.Tensor] = None,
        center_rewards_coefficient: Optional[float] = None,
    ) -> InfoRMLossOutput:
        """InfoRM loss from one padding-free packed row (``forward`` in pair mode).

        ``input_ids`` / ``position_ids`` [1, T] hold 2 * num_pairs sequences in this order: the
        num_pairs chosen responses (pair 0, 1, ...), then the num_pairs rejected ones in the same
        pair order (``pack_sequences(chosen + rejected)``). A trailing filler sequence from
        ``pad_to_multiple_of`` is allowed and ignored.
        """
        check_positive_int("num_pairs", num_pairs)
        if position_ids is None:
            raise ValueError("position_ids: required for a packed batch")
        output = self(input_ids=input_ids, position_ids=position_ids, num_pairs=num_pairs, margin=margin, beta=beta,
                      noise=self._pair_noise(noise_chosen, noise_rejected, num_pairs, input_ids.device),
                      center_rewards_coefficient=center_rewards_coefficient)
        return _loss_output(output)

    def _pair_noise(self, noise_chosen, noise_rejected, pairs, device):
        if not self.head.training:
            return None
        like = torch.empty(0, device=device, dtype=torch.float32)
        return join_pair_noise(noise_chosen, noise_rejected, pairs, self.head.latent_dim, like)

    @torch.no_grad()
    def latents(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Detection latents mu [B, L] (float32) without gradients (eval-mode latent, whatever the mode)."""
        return self.score(input_ids, attention_mask, position_ids)[1]

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards [B], mu [B, L]) in eval style, without gradients: the normalised reward at z = mu."""
        pooled = self._encode(input_ids, attention_mask, position_ids, None)
        # Through the head's forward, not its weights: DeepSpeed ZeRO-3 gathers a module's
        # partitioned weights only around its forward. Zero noise gives z = mu in training mode too.
        noise = torch.zeros(pooled.shape[0], self.head.latent_dim, device=pooled.device) if self.head.training else None
        out = self.head(pooled, noise=noise)
        return self._normalize(out.reward).float(), out.mu

    def _pad_id(self) -> int:
        pad = getattr(self.config.backbone_config, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.config, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    # ------------------------------------------------------------------------------------------
    # reward normalisation and export

    def set_reward_normalization(self, mean: float, std: float) -> None:
        """Serve rewards as (raw - mean) / std; stored in the config (saved with the model)."""
        self.config.reward_mean, self.config.reward_std = check_normalization(mean, std)

    def fit_reward_normalization(self, rewards: torch.Tensor) -> tuple[float, float]:
        """Set the normalisation to the mean / std of RAW rewards (e.g. ``score`` output on a
        reference set with normalisation at its default). Returns (mean, std)."""
        rewards = torch.as_tensor(rewards).detach().double().flatten()
        if rewards.numel() < 2:
            raise ValueError(f"rewards: need at least 2 values, got {rewards.numel()}")
        if not bool(torch.isfinite(rewards).all()):
            raise ValueError("rewards: contains NaN or Inf")
        mean, std = float(rewards.mean()), float(rewards.std())
        if not std > 0:
            raise ValueError("rewards: all values are equal; the standard deviation is 0")
        self.set_reward_normalization(mean, std)
        return mean, std


def _loss_output(output: InfoRMRewardModelOutput) -> InfoRMLossOutput:
    return InfoRMLossOutput(
        loss=output.loss, preference_loss=output.preference_loss, kl=output.kl_loss, accuracy=output.accuracy,
        reward_margin=output.reward_margin, reward_chosen=output.reward_chosen, reward_rejected=output.reward_rejected,
        mu=output.mu, logvar=output.logvar,
    )


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or a copy when it is a view of another tensor."""
    return tensor.clone() if tensor._base is not None else tensor


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _default_mask(side: str, input_ids, attention_mask):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{side}_input_ids: expected a [B, T] tensor, got {_describe(input_ids)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{side}_attention_mask: expected shape {tuple(input_ids.shape)} like {side}_input_ids, "
            f"got {_describe(attention_mask)}"
        )
    check_attention_mask(f"{side}_attention_mask", attention_mask, *input_ids.shape)
    return attention_mask


def _unpack(flat_ids: torch.Tensor, flat_positions: torch.Tensor, ends: torch.Tensor, pad_id: int):
    """Packed [T] ids -> right-padded [n, max_len] ids and mask, using each sequence's last index."""
    ends = ends.to(flat_ids.device)
    lengths = flat_positions.to(flat_ids.device)[ends] + 1  # [n]
    starts = ends - lengths + 1
    offsets = torch.arange(int(lengths.max()), device=flat_ids.device)
    valid = offsets[None, :] < lengths[:, None]  # [n, max_len]
    index = (starts[:, None] + offsets[None, :]).clamp(max=flat_ids.numel() - 1)
    ids = torch.where(valid, flat_ids[index], torch.full_like(index, pad_id))
    return ids, valid.to(torch.long)


def _right_pad(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    extra = length - tensor.shape[1]
    if extra == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, extra), value=value)


AutoModel.register(InfoRMConfig, InfoRMForRewardModel, exist_ok=True)
AutoModelForSequenceClassification.register(InfoRMConfig, InfoRMForRewardModel, exist_ok=True)
