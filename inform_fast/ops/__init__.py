"""The package's ops, registered with ``torch.library`` so that ``torch.compile`` sees them.

Each op (namespace ``inform_fast``, e.g. ``torch.ops.inform_fast.linear_pairwise_loss``) has a
fake (meta) implementation for shape propagation and, where it is differentiable, its backward
registered as an op of its own. Its one implementation for every device resolves the backend
through ``inform_fast.dispatch`` when it runs: the reference math (``inform_fast.reference``) by
default on CPU, the Triton kernels (``inform_fast.kernels``) on CUDA, or what ``backend=`` /
``INFORM_FAST_BACKEND`` forces. Importing these modules imports neither Triton nor the kernels.

* ``inform_fast.ops.vib_head``: the head's encoder and its fused pairwise loss.
* ``inform_fast.ops.mahalanobis``: the detectors' squared Mahalanobis distance.
* ``inform_fast.ops.registry``: ``define_op``, how the detection ops (Mahalanobis, DBSCAN, k-NN)
  are registered: torch.library's define / impl, without ``custom_op``'s wrapper, whose first
  call imports ``torch._dynamo`` (seconds).
"""
