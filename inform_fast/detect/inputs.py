"""Conversion and checks of latent matrices, and reading them from files.

Every public detection function passes its latent arguments through ``as_latents`` so that bad
input (wrong rank, empty, NaN/Inf, mismatched dimensions) fails with an error naming the argument.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from inform_fast.validation import check_finite

LATENT_SUFFIXES = (".npy", ".safetensors", ".pt", ".pth")


def as_latents(
    name: str,
    latents,
    dim: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Return ``latents`` as a 2-D floating torch.Tensor [n, L], checked.

    Accepts a torch.Tensor or anything ``np.asarray`` takes (NumPy arrays are shared, not copied,
    where the dtype allows). ``dim`` checks L against another set; ``dtype`` casts (float16/bfloat16
    inputs are kept unless a dtype is given); ``device`` moves.
    """
    if not isinstance(latents, torch.Tensor):
        try:
            array = np.asarray(latents)
        except Exception as error:
            raise ValueError(f"{name}: cannot be read as an array ({error})") from error
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
        if np.iscomplexobj(array):
            raise ValueError(f"{name}: expected real numbers, got complex dtype {array.dtype} (casting would drop the imaginary part)")
        if not array.dtype.isnative:  # a big-endian .npy file: torch reads native byte order only
            array = array.astype(array.dtype.newbyteorder("="))
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        latents = torch.from_numpy(np.ascontiguousarray(array))
    if latents.is_complex():
        raise ValueError(f"{name}: expected real numbers, got complex dtype {latents.dtype} (casting would drop the imaginary part)")
    if latents.dtype == torch.bool:
        raise ValueError(f"{name}: expected a numeric tensor, got dtype {latents.dtype}")
    if not latents.is_floating_point():
        latents = latents.to(torch.float32)
    if latents.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [n, L] latent matrix, got shape {tuple(latents.shape)}")
    if latents.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}: is empty (0 latents)")
    if latents.shape[1] == 0:
        raise ValueError(f"{name}: latent dimension is 0")
    if dim is not None and latents.shape[1] != dim:
        raise ValueError(f"{name}: latent dimension {latents.shape[1]} does not match the expected {dim}")
    if device is not None:
        latents = latents.to(device)
    if dtype is not None:
        latents = latents.to(dtype)
    check_finite(name, latents)
    return latents


def load_latents(path: str, key: Optional[str] = None, name: str = "path") -> torch.Tensor:
    """Read a latent matrix from .npy, .safetensors or .pt/.pth.

    For .safetensors and .pt files holding several tensors, ``key`` picks one; without it the
    key "mu", "latents", or the only tensor is used. Returns a checked [n, L] tensor.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{name}: file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in LATENT_SUFFIXES:
        raise ValueError(f"{name}: unsupported file type {suffix!r} (expected one of {LATENT_SUFFIXES})")
    try:
        if suffix == ".npy":
            value = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            value = load_file(path)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file: name the argument and the file, keep the cause's first line
        cause = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{name}: could not read {path}: {type(error).__name__}: {cause}") from error
    if isinstance(value, dict):
        value = _pick(value, key, path, name)
    elif key is not None:
        raise ValueError(f"{name}: key {key!r} given but {path} holds a single array")
    return as_latents(f"{name} ({path})", value)


def container_key(path: str, key: Optional[str]) -> Optional[str]:
    """``key`` for a container file (.safetensors / .pt), None for a .npy file, which holds one
    array: how a command-line ``--key`` applies to a mix of file types."""
    return None if path.lower().endswith(".npy") else key


def _pick(tensors: dict, key: Optional[str], path: str, name: str):
    if key is not None:
        if key not in tensors:
            raise ValueError(f"{name}: key {key!r} not in {path} (keys: {sorted(tensors)})")
        return tensors[key]
    for candidate in ("mu", "latents"):
        if candidate in tensors:
            return tensors[candidate]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(f"{name}: {path} holds several tensors {sorted(tensors)}; choose one with a key")
