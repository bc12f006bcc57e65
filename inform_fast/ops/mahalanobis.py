"""The detectors' squared Mahalanobis distance as a registered op.

``torch.ops.inform_fast.mahalanobis_sq(x [n, dim], mean [dim], whiten [dim, dim], precision,
backend?) -> d2 [n]`` (the work dtype: float32, float64 for float64 x): the reference
(``inform_fast.reference.mahalanobis_sq``, chunked PyTorch) on CPU, the fused Triton kernel
(``inform_fast.kernels.mahalanobis``) on CUDA. Not differentiable (detection scores only).
"""
from __future__ import annotations

from typing import Optional

import torch

from inform_fast import dispatch, reference
from inform_fast.ops.registry import define_op


def _mahalanobis_sq_op(x: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, precision: str,
                       backend: Optional[str]) -> torch.Tensor:
    name, implementation = dispatch.resolve("mahalanobis_sq", x.device, backend)
    if name == "triton" and x.dtype == torch.float64:
        implementation = reference.mahalanobis_sq  # the kernel has no float64 path: exact torch in float64
    return implementation(x, mean, whiten, precision)


def _mahalanobis_sq_fake(x, mean, whiten, precision, backend):
    return x.new_empty(x.shape[0], dtype=whiten.dtype)


define_op("mahalanobis_sq", "(Tensor x, Tensor mean, Tensor whiten, str precision, str? backend) -> Tensor", _mahalanobis_sq_op,
          _mahalanobis_sq_fake)


def mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, precision: str = "tf32",
                   backend: Optional[str] = None) -> torch.Tensor:
    """d2 [n] = ||(x - mean) @ whiten||^2 (op "mahalanobis_sq").

    x [n, dim] any float dtype; ``mean`` [dim] and ``whiten`` [dim, dim] in the work dtype
    (float32, float64 for float64 x) on x's device. ``precision``: the CUDA kernel's tensor-core
    mode ("tf32", "tf32x3" or "ieee"); ``backend`` as in ``inform_fast.dispatch``."""
    return torch.ops.inform_fast.mahalanobis_sq(x, mean, whiten, precision, backend)
