"""Triton fused Mahalanobis: d2[i] = ||(x_i - mean) @ A||^2 with A = L^{-T} (L the Cholesky
factor of the reference covariance).

One program owns BLOCK_M rows: it loads x tiles, subtracts the mean in registers, multiplies by
column blocks of A on the tensor cores (tf32, 3xtf32 or exact fp32), squares and row-sums the
product in the epilogue and writes only d2 [n]. The [n, L] whitened matrix never reaches memory,
so the kernel reads x once (plus A, which stays in L2) and is bound by x's bandwidth.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps) as ``mahalanobis_sq`` launches it on CUDA at
    dim = 128: bf16 and fp32 latents with tensor cores, fp32 with exact products."""
    configs = []
    for x_type, precision in (("*bf16", "tf32"), ("*fp32", "tf32"), ("*fp32", "ieee")):
        block_n, block_k, block_m, num_warps = _launch_blocks(128, precision, cuda=True)
        configs.append((_mahalanobis_sq_kernel, {"x_ptr": x_type},
                        dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision), num_warps))
    return configs



@triton.jit
def _mahalanobis_sq_kernel(
    x_ptr,  # [n, dim] latents (fp32 / bf16 / fp16), row stride stride_x
    mean_ptr,  # [dim] float32 reference mean
    a_ptr,  # [dim, dim] float32 whitening matrix A = L^{-T}, row-major
    out_ptr,  # [n] float32 out: squared Mahalanobis distance
    n,
    dim,
    stride_x,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,  # "tf32", "tf32x3" or "ieee"
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n
    rows = offs_m.to(tl.int64) * stride_x  # 64-bit: n * dim can pass 2^31
    total = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, dim, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < dim
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, dim, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < dim
            x = tl.load(x_ptr + rows[:, None] + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            mu = tl.load(mean_ptr + offs_k, mask=mask_k, other=0.0)
            centred = x.to(tl.float32) - mu[None, :]  # padded columns: 0 - 0
            a = tl.load(a_ptr + offs_k[:, None] * dim + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc += tl.dot(centred, a, input_precision=PRECISION)
        # epilogue: padded columns of A are 0, so they add nothing to the square-sum
        total += tl.sum(acc * acc, axis=1)
    tl.store(out_ptr + offs_m, total, mask=mask_m)


def _launch_blocks(dim: int, precision: str, cuda: bool) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_M, num_warps). On sm_90, at dim = 128, 16-deep K steps keep the
    128 x 128 fp32 accumulator in registers (32-deep ones spill it: 60 local stores for fp32
    latents with tf32, 110 with exact products), and exact products need 64-row blocks
    (``resource_report``)."""
    block_n = max(16, min(128, triton.next_power_of_2(dim)))
    block_k = 16
    block_m = (64 if precision == "ieee" else 128) if cuda else 32
    return block_n, block_k, block_m, 8 if block_n >= 128 else 4


def mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, precision: str = "tf32") -> torch.Tensor:
    """d2 [n] float32 for x [n, dim] (fp32/bf16/fp16: the op ``inform_fast.ops.mahalanobis``
    sends float64 to the reference).

    ``mean`` [dim] and ``whiten`` [dim, dim] are float32 on x's device. ``precision``: "tf32" /
    "tf32x3" use tensor cores on CUDA, "ieee" exact fp32 products; under the CPU interpreter
    every product is exact fp32."""
    if x.dtype == torch.float64:
        raise ValueError("x: the Triton Mahalanobis kernel takes float16 / bfloat16 / float32 latents, got float64")
    n, dim = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    mean = mean.to(torch.float32).contiguous()
    whiten = whiten.to(torch.float32).contiguous()
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0:
        return out
    if not x.is_cuda:
        precision = "ieee"  # the interpreter computes dots in numpy fp32 anyway
    block_n, block_k, block_m, num_warps = _launch_blocks(dim, precision, x.is_cuda)
    grid = (triton.cdiv(n, block_m),)
    _mahalanobis_sq_kernel[grid](
        x, mean, whiten, out, n, dim, x.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision,
        num_warps=num_warps,
    )
    return out
