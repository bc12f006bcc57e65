"""IBL penalty (InfoRM journal version): ``reward' = reward - coef * d_M(z)``, the Mahalanobis
distance of the response latent to the reference (SFT) latents, with one fitted reference and
coefficient per data class when classes are given.

The distances are computed on the latents' device (as every detection score: the policy latents
decide where), the scorers' mean and whitening matrix moved there once and cached; the distance is
one fused kernel (CUDA) or GEMM, only the [n] result moves to the rewards' device (their device and
dtype are kept), and per-class selection is a ``torch.where`` per class rather than a
data-dependent gather. Nothing round-trips through the host when both are on one accelerator.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from inform_fast.detect.inputs import as_latents
from inform_fast.detect.mahalanobis import MahalanobisScorer
from inform_fast.validation import check_real


def _check_coef(name: str, value) -> float:
    return check_real(name, value, minimum=0)


def _check_scorer(name: str, scorer, dim: int) -> MahalanobisScorer:
    if not isinstance(scorer, MahalanobisScorer):
        raise ValueError(f"{name}: expected a fitted MahalanobisScorer, got {type(scorer).__name__}")
    scorer._finalize(name)
    if scorer.dim != dim:
        raise ValueError(f"{name}: scorer latent dimension {scorer.dim} does not match latents' {dim}")
    return scorer


def _checked_latents(rewards: torch.Tensor, latents) -> torch.Tensor:
    """The latents [n, L], checked, left on their device: the distances are computed there (like
    every detection score) and only the [n] result moves to the rewards' device."""
    if isinstance(latents, torch.Tensor) and latents.device.type != "cpu":
        # shape checks only: a NaN/Inf check would synchronise with the host; NaN latents give
        # NaN rewards, which the trainer sees anyway
        if latents.dim() != 2 or latents.shape[0] != rewards.shape[0] or not latents.is_floating_point():
            raise ValueError(f"latents: expected a floating [{rewards.shape[0]}, L] tensor, got {tuple(latents.shape)} {latents.dtype}")
        return latents
    latents = as_latents("latents", latents, allow_empty=True)
    if latents.shape[0] != rewards.shape[0]:
        raise ValueError(f"latents: {latents.shape[0]} rows for {rewards.shape[0]} rewards")
    return latents


def ibl_penalty(
    rewards: torch.Tensor,
    latents,
    scorer_or_scorers_by_class: Union[MahalanobisScorer, Mapping],
    coef: Union[float, Mapping] = 1.0,
    classes: Optional[Union[Sequence, torch.Tensor, np.ndarray]] = None,
) -> torch.Tensor:
    """Penalised rewards [n] = rewards - coef * Mahalanobis distance of latents [n, L].

    rewards: [n] floating tensor (its device and dtype are kept; gradients flow to it, the
    penalty itself is a constant). latents: [n, L] tensor/array. scorer_or_scorers_by_class: a
    fitted ``MahalanobisScorer``, or a dict class -> scorer (then ``classes`` is required).
    coef: float >= 0, or a dict class -> float. classes: [n] class labels (ints or strings; a
    list, array or tensor). Labels given on the host are checked (unknown class -> ValueError);
    labels already on an accelerator are not (a check would synchronise): rows of a class without
    a scorer get a NaN reward there.
    """
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point() or rewards.dim() != 1:
        raise ValueError(f"rewards: expected a 1-D floating tensor [n], got {getattr(rewards, 'shape', type(rewards).__name__)}")
    latents = _checked_latents(rewards, latents)
    dim = latents.shape[1]
    by_class = isinstance(scorer_or_scorers_by_class, Mapping)
    if classes is None:
        if by_class:
            raise ValueError("classes: required when scorers are given per class")
        if isinstance(coef, Mapping):
            raise ValueError("coef: a per-class dict needs classes")
        scorer = _check_scorer("scorer_or_scorers_by_class", scorer_or_scorers_by_class, dim)
        c = _check_coef("coef", coef)
        with torch.no_grad():
            distance = scorer.distance(latents, name="latents", check_finite=latents.device.type == "cpu")
        return rewards - (c * distance).to(device=rewards.device, dtype=rewards.dtype)

    keys, index = _class_index(classes, rewards)
    if by_class:
        scorers = {k: _check_scorer(f"scorer_or_scorers_by_class[{k!r}]", v, dim) for k, v in scorer_or_scorers_by_class.items()}
    else:
        scorers = None
        single = _check_scorer("scorer_or_scorers_by_class", scorer_or_scorers_by_class, dim)
    if isinstance(coef, Mapping):
        coefs = {k: _check_coef(f"coef[{k!r}]", v) for k, v in coef.items()}
    else:
        coefs, c = None, _check_coef("coef", coef)
    if keys is not None:  # labels on the host: check coverage now, index positions into keys
        for table, what in ((scorers, "classes: no scorer"), (coefs, "coef: no coefficient")):
            missing = [k for k in keys if table is not None and k not in table]
            if missing:
                raise ValueError(f"{what} for class(es) {missing[:8]} (given for {sorted(map(str, table))[:8]})")
        labels = [(position, label) for position, label in enumerate(keys)]
    else:  # integer labels on the device: one where() per known class
        known = scorers if scorers is not None else coefs
        labels = [(label, label) for label in known] if known is not None else None
    work = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    distances: dict = {}  # id(scorer) -> [n] distance, each scorer evaluated once
    with torch.no_grad():
        def distance_for(scorer):
            if id(scorer) not in distances:
                distance = scorer.distance(latents, name="latents", check_finite=latents.device.type == "cpu")
                distances[id(scorer)] = distance.to(device=rewards.device, dtype=work)
            return distances[id(scorer)]

        if labels is None:  # one scorer, one coefficient: the classes change nothing
            penalty = c * distance_for(single)
        else:
            penalty = torch.full(rewards.shape, float("nan"), dtype=work, device=rewards.device)
            for code, label in labels:
                scorer = scorers[label] if scorers is not None else single
                weight = coefs[label] if coefs is not None else c
                penalty = torch.where(index == code, weight * distance_for(scorer), penalty)
    return rewards - penalty.to(rewards.dtype)


def _class_index(classes, rewards: torch.Tensor):
    """(host class keys in first-seen order, [n] int64 index into them on rewards' device), or
    (None, the labels themselves on the device) for integer labels already on an accelerator."""
    n = rewards.shape[0]
    if isinstance(classes, torch.Tensor) and classes.device.type != "cpu":
        if classes.shape != (n,) or classes.is_floating_point():
            raise ValueError(f"classes: expected [{n}] integer labels, got {tuple(classes.shape)} {classes.dtype}")
        return None, classes.to(rewards.device)
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    elif isinstance(classes, np.ndarray):
        classes = classes.tolist()
    classes = list(classes)
    if len(classes) != n:
        raise ValueError(f"classes: {len(classes)} labels for {n} rewards")
    keys: dict = {}
    codes = [keys.setdefault(label, len(keys)) for label in classes]
    index = torch.tensor(codes, dtype=torch.int64).to(rewards.device, non_blocking=True)
    return list(keys), index
