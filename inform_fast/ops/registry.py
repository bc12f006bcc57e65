"""Registration of the detection ops with ``torch.library``'s define / impl API.

Why not ``torch.library.custom_op`` for them: its implementation wrapper imports
``torch._dynamo`` on the op's first call, 1.7 s (quiet) to 3.5 s (busy) on a 2-core CPU, which
the first DBSCAN, k-NN or Mahalanobis call of every process paid (2.5 s of a 3.6 s clustering of
32,000 latents). Ops defined here behave the same for callers and for ``torch.compile`` (a
schema, one implementation for every device, a fake implementation for tracing) and import
nothing on their first call. They are not differentiable (detection scores only; callers pass
detached tensors).
"""
from __future__ import annotations

from typing import Callable

import torch

_LIBRARY = torch.library.Library("inform_fast", "FRAGMENT")  # kept alive: it owns the registrations


def define_op(name: str, schema: str, implementation: Callable, fake: Callable) -> None:
    """``torch.ops.inform_fast.<name>`` with ``schema`` (the argument list and results, e.g.
    ``"(Tensor x, int k) -> Tensor"``), ``implementation`` for every device and ``fake`` for
    shape propagation."""
    _LIBRARY.define(name + schema)
    _LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
    torch.library.register_fake(f"inform_fast::{name}", fake, lib=_LIBRARY)
