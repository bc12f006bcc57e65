"""autograd.Functions and functional wrappers around the Triton kernels of ``inform_fast.kernels``.

Importing a module here imports Triton; ``inform_fast.dispatch`` does so only when a Triton path
is chosen.
"""
