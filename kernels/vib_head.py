"""Fused Triton kernels of the InfoRM head (variational information bottleneck) and its loss.

Notation: N rows, H hidden size, L latent size, B preference pairs, K = 2L encoder outputs.
The encoder weight is in ``nn.Linear`` layout [2L, H]: rows 0..L-1 give mu, rows L..2L-1 logvar.

Kernels (launchers below them take and return torch tensors; the autograd.Functions are in
``inform_fast.ops.vib_encode`` and ``inform_fast.ops.vib_loss``):

* ``_encode_fwd_kernel``: [mu, logvar] = x @ W^T (+ b), z = mu + exp(logvar/2) * eps, KL.
* ``_encode_bwd_kernel``: G = [dmu, dlogvar] from the output gradients (eps regenerated from the
  Philox seed, never stored), stores G for dW, and (STORE_DX, the one-kernel layout) dX = G @ W
  in the same pass; on CUDA dX comes from ``_grad_input_kernel`` instead.
* ``_pair_loss_fwd_kernel``: one program owns a block of pairs and projects its chosen and
  rejected rows against the same W tiles, then reparameterises, decodes, computes the per-pair
  loss and, because the loss is the last node of the graph, the gradient G of the pre-activations
  (Liger-style): the backward only scales it, so the noise is needed in the forward only.
* ``_project_partial_kernel``: the projection on its own (what CUDA runs): program (row block,
  H range, output tile) computes x @ W^T for 64 rows and up to 256 outputs (all 2L at L = 128)
  over its range of H and stores the fp32 sums; the two kernels above then add the ranges (PRE_PROJECTED) instead of projecting.
  64-row blocks get Hopper's warpgroup MMA, and splitting H keeps the SMs busy when a batch has
  few row blocks (B = 512 pairs: 16 blocks, 8 ranges, 128 programs on a 132-SM H100). Without
  it (the CPU interpreter's default) the fused kernels project in their own 16-row blocks.
* ``_grad_input_kernel``: dX = s * G @ W over a (row block, H range) grid.
  ``_grad_weight_kernel``: dW = s * G^T X, each program owning one [BLOCK_K, BLOCK_H] tile of dW
  and looping over the rows in order (deterministic).
* ``_philox_noise_kernel``: the noise the kernels draw for a seed, for tests and debugging.

Noise modes (constexpr NOISE_MODE): 0 none (z = mu), 1 explicit noise tensor, 2 Philox
``tl.randn(seed, row * L + j)`` where ``row`` is the global row index (chosen rows 0..B-1 and
rejected rows B..2B-1 in the loss).

Offsets into the [N, H] row tensors (x, dX) are 64-bit: N x H passes 2^31 at 524,288 rows of
H = 4096; the [N, L] tensors are indexed in 32 bits (2^31 / L rows).

Accumulation is float32 (float64 for float64 inputs). ``UPCAST`` makes the tl.dot operands
float32 first: the launchers set it under TRITON_INTERPRET=1 because the interpreter of
Triton 3.9 returns garbage for bf16/fp16 tl.dot; compiled kernels use the native tensor-core
dot with fp32 accumulation.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl

from inform_fast.dispatch import triton_interpret

NOISE_NONE, NOISE_EXPLICIT, NOISE_PHILOX = 0, 1, 2


# ------------------------------------------------------------------------------------------------
# helpers (inlined into the kernels)


@triton.jit
def _kl_terms(mu, lv, valid, L, KL_AUTHORS: tl.constexpr):
    """Per-row KL [BN] and its derivatives d/dmu, d/dlogvar [BN, BL] (zero outside ``valid``)."""
    zero = tl.zeros_like(mu)
    if KL_AUTHORS:
        # the authors' code: scalar formula on the means over the L latent dimensions
        m = tl.sum(tl.where(valid, mu, zero), axis=1) / L  # [BN]
        v = tl.sum(tl.where(valid, lv, zero), axis=1) / L  # [BN]
        ev = tl.exp(v)
        kl = 0.5 * (m * m + ev - 1.0 - v)
        dkl_dmu = tl.where(valid, zero + (m / L)[:, None], zero)
        dkl_dlv = tl.where(valid, zero + (0.5 * (ev - 1.0) / L)[:, None], zero)
    else:
        elv = tl.exp(lv)
        kl = 0.5 * tl.sum(tl.where(valid, mu * mu + elv - 1.0 - lv, zero), axis=1)
        dkl_dmu = tl.where(valid, mu, zero)
        dkl_dlv = tl.where(valid, 0.5 * (elv - 1.0), zero)
    return kl, dkl_dmu, dkl_dlv


@triton.jit
def _load_noise(noise_ptr, stride_noise, seed, rows, row_base, cols, valid, L, NOISE_MODE: tl.constexpr, dtype: tl.constexpr):
    """eps [BN, BL] for local ``rows``; Philox offsets use the global row ``row_base + rows``."""
    if NOISE_MODE == 1:
        eps = tl.load(noise_ptr + rows[:, None] * stride_noise + cols[None, :], mask=valid, other=0.0).to(dtype)
    else:
        offsets = (row_base + rows)[:, None] * L + cols[None, :]
        eps = tl.randn(seed, offsets).to(dtype)
        eps = tl.where(valid, eps, tl.zeros_like(eps))
    return eps


@triton.jit
def _h_range(split, per_split, H):
    """Columns [h_start, h_end) of H that split number ``split`` covers."""
    h_start = split * per_split
    return h_start, tl.minimum(h_start + per_split, H)


@triton.jit
def _store_input_grad(
    g_mu, g_lv,  # [BN, BL] gradients of mu and logvar (accumulation dtype)
    rows, row_mask, w_ptr, stride_w, dx_ptr, stride_dx, h_start, h_end, L,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """dX[rows, h_start:h_end] = g_mu @ W[:L] + g_lv @ W[L:] over those columns, tile by tile."""
    cols_l = tl.arange(0, BLOCK_L)
    l_mask = cols_l < L
    # the dot operands in W's dtype once, not per tile (bf16 G also halves its registers)
    if UPCAST:
        g_mu_op = g_mu
        g_lv_op = g_lv
    else:
        g_mu_op = g_mu.to(w_ptr.dtype.element_ty)
        g_lv_op = g_lv.to(w_ptr.dtype.element_ty)
    for h0 in range(h_start, h_end, BLOCK_H):
        cols_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = cols_h < h_end
        w_mask = l_mask[:, None] & h_mask[None, :]
        w_mu = tl.load(w_ptr + cols_l[:, None] * stride_w + cols_h[None, :], mask=w_mask, other=0.0)  # [BL, BH]
        w_lv = tl.load(w_ptr + (cols_l[:, None] + L) * stride_w + cols_h[None, :], mask=w_mask, other=0.0)
        if UPCAST:
            w_mu = w_mu.to(g_mu.dtype)
            w_lv = w_lv.to(g_mu.dtype)
        acc = tl.zeros((BLOCK_N, BLOCK_H), dtype=g_mu.dtype)
        acc = tl.dot(g_mu_op, w_mu, acc, input_precision="ieee")
        acc = tl.dot(g_lv_op, w_lv, acc, input_precision="ieee")
        tl.store(dx_ptr + rows.to(tl.int64)[:, None] * stride_dx + cols_h[None, :], acc, mask=row_mask[:, None] & h_mask[None, :])


@triton.jit
def _project(
    x_ptr, stride_x, rows, row_mask, w_ptr, stride_w, h_start, h_end, L,
    ACC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """mu, logvar [BN, BL] = x[rows, h] @ W[:L, h]^T, x[rows, h] @ W[L:, h]^T over h_start <= h < h_end."""
    cols_l = tl.arange(0, BLOCK_L)
    l_mask = cols_l < L
    mu = tl.zeros((BLOCK_N, BLOCK_L), dtype=ACC)
    lv = tl.zeros((BLOCK_N, BLOCK_L), dtype=ACC)
    for h0 in range(h_start, h_end, BLOCK_H):
        cols_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = cols_h < h_end
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols_h[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        # W^T tiles [BH, BL], read straight from the [2L, H] layout
        wt_mask = h_mask[:, None] & l_mask[None, :]
        w_mu = tl.load(w_ptr + cols_l[None, :] * stride_w + cols_h[:, None], mask=wt_mask, other=0.0)
        w_lv = tl.load(w_ptr + (cols_l[None, :] + L) * stride_w + cols_h[:, None], mask=wt_mask, other=0.0)
        if UPCAST:
            x = x.to(ACC)
            w_mu = w_mu.to(ACC)
            w_lv = w_lv.to(ACC)
        mu = tl.dot(x, w_mu, mu, input_precision="ieee")
        lv = tl.dot(x, w_lv, lv, input_precision="ieee")
    return mu, lv


@triton.jit
def _project_pair(
    xw_ptr, stride_xw, xl_ptr, stride_xl, rows, row_mask, w_ptr, stride_w, h_start, h_end, L,
    ACC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """``_project`` of the chosen and the rejected rows of a pair block against the same W tiles
    (each tile read once for both): mu_w, lv_w, mu_l, lv_l [BB, BL]."""
    cols = tl.arange(0, BLOCK_L)
    l_mask = cols < L
    mu_w = tl.zeros((BLOCK_B, BLOCK_L), dtype=ACC)
    lv_w = tl.zeros((BLOCK_B, BLOCK_L), dtype=ACC)
    mu_l = tl.zeros((BLOCK_B, BLOCK_L), dtype=ACC)
    lv_l = tl.zeros((BLOCK_B, BLOCK_L), dtype=ACC)
    for h0 in range(h_start, h_end, BLOCK_H):
        cols_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = cols_h < h_end
        x_mask = row_mask[:, None] & h_mask[None, :]
        x_w = tl.load(xw_ptr + rows.to(tl.int64)[:, None] * stride_xw + cols_h[None, :], mask=x_mask, other=0.0)
        x_l = tl.load(xl_ptr + rows.to(tl.int64)[:, None] * stride_xl + cols_h[None, :], mask=x_mask, other=0.0)
        wt_mask = h_mask[:, None] & l_mask[None, :]
        w_mu = tl.load(w_ptr + cols[None, :] * stride_w + cols_h[:, None], mask=wt_mask, other=0.0)  # [BH, BL]
        w_lv = tl.load(w_ptr + (cols[None, :] + L) * stride_w + cols_h[:, None], mask=wt_mask, other=0.0)
        if UPCAST:
            x_w = x_w.to(ACC)
            x_l = x_l.to(ACC)
            w_mu = w_mu.to(ACC)
            w_lv = w_lv.to(ACC)
        mu_w = tl.dot(x_w, w_mu, mu_w, input_precision="ieee")
        lv_w = tl.dot(x_w, w_lv, lv_w, input_precision="ieee")
        mu_l = tl.dot(x_l, w_mu, mu_l, input_precision="ieee")
        lv_l = tl.dot(x_l, w_lv, lv_l, input_precision="ieee")
    return mu_w, lv_w, mu_l, lv_l


@triton.jit
def _sum_partials(part_ptr, which, sets, rows, cols, valid, N, L, num_splits, ACC: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """mu, logvar [BN, BL]: the sum over the H ranges of ``_project_partial_kernel``'s output
    [num_splits, sets, N, 2L] for row set ``which`` (in split order: deterministic)."""
    mu = tl.zeros((BLOCK_N, BLOCK_L), dtype=ACC)
    lv = tl.zeros((BLOCK_N, BLOCK_L), dtype=ACC)
    for split in range(0, num_splits):
        idx = ((split * sets + which) * N + rows[:, None]) * (2 * L) + cols[None, :]
        mu += tl.load(part_ptr + idx, mask=valid, other=0.0)
        lv += tl.load(part_ptr + idx + L, mask=valid, other=0.0)
    return mu, lv


@triton.jit
def _project_all(
    x_ptr, stride_x, rows, row_mask, w_ptr, stride_w, ks, h_start, h_end, K,
    ACC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """[BN, BK] = x[rows, h] @ W[ks, h]^T over h_start <= h < h_end: up to 256 of the 2L outputs
    in one tile (all of them at L = 128), so that each x tile feeds one wide dot (64 rows x 256:
    a Hopper wgmma shape)."""
    k_mask = ks < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    for h0 in range(h_start, h_end, BLOCK_H):
        cols_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = cols_h < h_end
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols_h[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w_t = tl.load(w_ptr + ks[None, :] * stride_w + cols_h[:, None], mask=h_mask[:, None] & k_mask[None, :], other=0.0)
        if UPCAST:
            x = x.to(ACC)
            w_t = w_t.to(ACC)
        acc = tl.dot(x, w_t, acc, input_precision="ieee")
    return acc


@triton.jit
def _project_partial_kernel(
    x1_ptr, stride_x1,  # [N, H] first row set (the chosen rows in the loss)
    x2_ptr, stride_x2,  # [N, H] second row set (the rejected rows; SETS == 2)
    w_ptr, stride_w,  # [2L, H] encoder weight
    part_ptr,  # [S, SETS, N, 2L] output, accumulation dtype: [mu, logvar] over H range s, no bias
    N, H, K,  # K = 2L
    H_PER_SPLIT,  # columns of H per split (a multiple of BLOCK_H)
    SETS: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid axis 0: the row blocks of set 0, then those of set 1; axis 1: the H ranges; axis 2:
    # the output tiles (one unless 2L > 256)
    blocks_per_set = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    which = pid // blocks_per_set
    split = tl.program_id(1)
    rows = (pid - which * blocks_per_set) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    ks = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    h_start, h_end = _h_range(split, H_PER_SPLIT, H)
    # one loop for either set (a select, not two copies of the pipelined loop)
    x_ptr = tl.where(which == 0, x1_ptr, x2_ptr)
    stride_x = tl.where(which == 0, stride_x1, stride_x2)
    acc = _project_all(x_ptr, stride_x, rows, row_mask, w_ptr, stride_w, ks, h_start, h_end, K,
                       ACC, UPCAST, BLOCK_N, BLOCK_H, BLOCK_K)
    idx = ((split * SETS + which) * N + rows[:, None]) * K + ks[None, :]
    tl.store(part_ptr + idx, acc, mask=row_mask[:, None] & (ks < K)[None, :])


# ------------------------------------------------------------------------------------------------
# encoder (forward of InfoRMHead): x -> mu, logvar, z, kl


@triton.jit
def _encode_fwd_kernel(
    x_ptr, stride_x,  # [N, H] pooled hidden states (row stride; unit column stride)
    w_ptr, stride_w,  # [2L, H] encoder weight
    b_ptr,  # [2L] encoder bias (unused unless HAS_BIAS)
    noise_ptr, stride_noise,  # [N, L] explicit noise (NOISE_MODE == 1)
    seed,  # Philox seed (NOISE_MODE == 2)
    mu_ptr, lv_ptr, z_ptr,  # [N, L] outputs, contiguous, accumulation dtype
    kl_ptr,  # [N] output, KL per row
    part_ptr, num_splits,  # [S, 1, N, 2L] partial projections (PRE_PROJECTED) and S
    N, H, L,
    HAS_BIAS: tl.constexpr, NOISE_MODE: tl.constexpr, KL_AUTHORS: tl.constexpr, UPCAST: tl.constexpr,
    PRE_PROJECTED: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_L)
    l_mask = cols < L
    valid = row_mask[:, None] & l_mask[None, :]

    if PRE_PROJECTED:
        mu, lv = _sum_partials(part_ptr, 0, 1, rows, cols, valid, N, L, num_splits, ACC, BLOCK_N, BLOCK_L)
    else:
        mu, lv = _project(x_ptr, stride_x, rows, row_mask, w_ptr, stride_w, 0, H, L, ACC, UPCAST, BLOCK_N, BLOCK_H, BLOCK_L)
    if HAS_BIAS:
        mu += tl.load(b_ptr + cols, mask=l_mask, other=0.0).to(ACC)[None, :]
        lv += tl.load(b_ptr + L + cols, mask=l_mask, other=0.0).to(ACC)[None, :]
    if NOISE_MODE == 0:
        z = mu
    else:
        eps = _load_noise(noise_ptr, stride_noise, seed, rows, 0, cols, valid, L, NOISE_MODE, ACC)
        z = mu + tl.exp(0.5 * lv) * eps
    kl, _, _ = _kl_terms(mu, lv, valid, L, KL_AUTHORS)

    out = rows[:, None] * L + cols[None, :]
    tl.store(mu_ptr + out, mu, mask=valid)
    tl.store(lv_ptr + out, lv, mask=valid)
    tl.store(z_ptr + out, z, mask=valid)
    tl.store(kl_ptr + rows, kl, mask=row_mask)


@triton.jit
def _encode_bwd_kernel(
    w_ptr, stride_w,  # [2L, H] encoder weight
    mu_ptr, lv_ptr,  # [N, L] saved forward outputs (contiguous)
    gmu_ptr, glv_ptr, gz_ptr,  # [N, L] gradients of mu, logvar, z (contiguous)
    gkl_ptr,  # [N] gradient of kl
    noise_ptr, stride_noise,  # [N, L] explicit noise (NOISE_MODE == 1)
    seed,  # Philox seed of the forward (NOISE_MODE == 2): the noise is regenerated here
    g_ptr,  # [N, 2L] output: gradient of the pre-activations [dmu, dlogvar], for dW and db
    dx_ptr, stride_dx,  # [N, H] output: gradient of the pooled rows
    N, H, L,
    H_PER_SPLIT,  # columns of dX per program along grid axis 1 (a multiple of BLOCK_H)
    NOISE_MODE: tl.constexpr, KL_AUTHORS: tl.constexpr, UPCAST: tl.constexpr,
    STORE_DX: tl.constexpr,  # False: G only (dX then comes from ``_grad_input_kernel``)
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_L)
    l_mask = cols < L
    valid = row_mask[:, None] & l_mask[None, :]
    idx = rows[:, None] * L + cols[None, :]

    mu = tl.load(mu_ptr + idx, mask=valid, other=0.0)
    lv = tl.load(lv_ptr + idx, mask=valid, other=0.0)
    g_z = tl.load(gz_ptr + idx, mask=valid, other=0.0).to(mu.dtype)
    g_kl = tl.load(gkl_ptr + rows, mask=row_mask, other=0.0).to(mu.dtype)
    _, dkl_dmu, dkl_dlv = _kl_terms(mu, lv, valid, L, KL_AUTHORS)

    g_mu = tl.load(gmu_ptr + idx, mask=valid, other=0.0).to(mu.dtype) + g_z + g_kl[:, None] * dkl_dmu
    g_lv = tl.load(glv_ptr + idx, mask=valid, other=0.0).to(mu.dtype) + g_kl[:, None] * dkl_dlv
    if NOISE_MODE != 0:
        eps = _load_noise(noise_ptr, stride_noise, seed, rows, 0, cols, valid, L, NOISE_MODE, mu.dtype)
        g_lv += g_z * 0.5 * tl.exp(0.5 * lv) * eps
    g_mu = tl.where(valid, g_mu, tl.zeros_like(g_mu))
    g_lv = tl.where(valid, g_lv, tl.zeros_like(g_lv))

    # every split of a row block recomputes G (L values a row, cheap); the first one stores it
    g_idx = rows[:, None] * (2 * L) + cols[None, :]
    if split == 0:
        tl.store(g_ptr + g_idx, g_mu, mask=valid)
        tl.store(g_ptr + g_idx + L, g_lv, mask=valid)
    if STORE_DX:
        h_start, h_end = _h_range(split, H_PER_SPLIT, H)
        _store_input_grad(g_mu, g_lv, rows, row_mask, w_ptr, stride_w, dx_ptr, stride_dx, h_start, h_end, L,
                          UPCAST, BLOCK_N, BLOCK_H, BLOCK_L)


# ------------------------------------------------------------------------------------------------
# pairwise loss with the linear decoder


@triton.jit
def _pair_loss_fwd_kernel(
    xw_ptr, stride_xw,  # [B, H] pooled chosen rows
    xl_ptr, stride_xl,  # [B, H] pooled rejected rows
    w_ptr, stride_w,  # [2L, H] encoder weight
    b_ptr,  # [2L] encoder bias (HAS_BIAS)
    wdec_ptr,  # [L] decoder weight
    bdec_ptr,  # [1] decoder bias (HAS_DEC_BIAS)
    nw_ptr, stride_nw,  # [B, L] explicit chosen noise (NOISE_MODE == 1)
    nl_ptr, stride_nl,  # [B, L] explicit rejected noise (NOISE_MODE == 1)
    margin_ptr, stride_margin,  # [B] margin (HAS_MARGIN; stride 0 for a scalar)
    seed,  # Philox seed (NOISE_MODE == 2); rejected rows use global rows B..2B-1
    beta_ptr,  # [1] weight of the KL term (a tensor: float scalar arguments would be rounded to fp32)
    g_ptr,  # [2B, 2L] output (STORE_GRAD): d loss / d [mu, logvar], chosen rows then rejected rows
    pair_ptr,  # [4, B] output: -logsigmoid(r_w - r_l - margin), KL_w + KL_l, r_w - r_l, [r_w > r_l]
    reward_ptr,  # [2, B] output: r_w, r_l
    dwdec_ptr,  # [programs, L] output (STORE_GRAD): this program's part of d loss / d w_dec
    part_ptr, num_splits,  # [S, 2, B, 2L] partial projections (PRE_PROJECTED) and S
    B, H, L,
    HAS_BIAS: tl.constexpr, HAS_DEC_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr,
    NOISE_MODE: tl.constexpr, KL_AUTHORS: tl.constexpr, STORE_GRAD: tl.constexpr, UPCAST: tl.constexpr,
    PRE_PROJECTED: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    cols = tl.arange(0, BLOCK_L)
    l_mask = cols < L
    valid = row_mask[:, None] & l_mask[None, :]

    # projection of the chosen and rejected rows of this pair block against the same W tiles
    if PRE_PROJECTED:
        mu_w, lv_w = _sum_partials(part_ptr, 0, 2, rows, cols, valid, B, L, num_splits, ACC, BLOCK_B, BLOCK_L)
        mu_l, lv_l = _sum_partials(part_ptr, 1, 2, rows, cols, valid, B, L, num_splits, ACC, BLOCK_B, BLOCK_L)
    else:
        mu_w, lv_w, mu_l, lv_l = _project_pair(xw_ptr, stride_xw, xl_ptr, stride_xl, rows, row_mask, w_ptr, stride_w,
                                               0, H, L, ACC, UPCAST, BLOCK_B, BLOCK_H, BLOCK_L)
    if HAS_BIAS:
        b_mu = tl.load(b_ptr + cols, mask=l_mask, other=0.0).to(ACC)[None, :]
        b_lv = tl.load(b_ptr + L + cols, mask=l_mask, other=0.0).to(ACC)[None, :]
        mu_w += b_mu
        mu_l += b_mu
        lv_w += b_lv
        lv_l += b_lv

    # reparameterisation and linear decoder
    w_dec = tl.load(wdec_ptr + cols, mask=l_mask, other=0.0).to(ACC)  # [BL]
    if NOISE_MODE == 0:
        z_w = mu_w
        z_l = mu_l
    else:
        eps_w = _load_noise(nw_ptr, stride_nw, seed, rows, 0, cols, valid, L, NOISE_MODE, ACC)
        eps_l = _load_noise(nl_ptr, stride_nl, seed, rows, B, cols, valid, L, NOISE_MODE, ACC)
        std_w = tl.exp(0.5 * lv_w)
        std_l = tl.exp(0.5 * lv_l)
        z_w = mu_w + std_w * eps_w
        z_l = mu_l + std_l * eps_l
    zero = tl.zeros_like(mu_w)
    z_w = tl.where(valid, z_w, zero)
    z_l = tl.where(valid, z_l, zero)
    r_w = tl.sum(z_w * w_dec[None, :], axis=1)  # [BB]
    r_l = tl.sum(z_l * w_dec[None, :], axis=1)
    if HAS_DEC_BIAS:
        b_dec = tl.load(bdec_ptr).to(ACC)
        r_w += b_dec
        r_l += b_dec

    kl_w, dkl_dmu_w, dkl_dlv_w = _kl_terms(mu_w, lv_w, valid, L, KL_AUTHORS)
    kl_l, dkl_dmu_l, dkl_dlv_l = _kl_terms(mu_l, lv_l, valid, L, KL_AUTHORS)

    gap = r_w - r_l
    logits = gap
    if HAS_MARGIN:
        logits = gap - tl.load(margin_ptr + rows * stride_margin, mask=row_mask, other=0.0).to(ACC)
    # -logsigmoid(t) = softplus(-t), written to stay finite for large |t|
    preference = tl.maximum(-logits, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(logits)))
    tl.store(pair_ptr + rows, preference, mask=row_mask)
    tl.store(pair_ptr + B + rows, kl_w + kl_l, mask=row_mask)
    tl.store(pair_ptr + 2 * B + rows, gap, mask=row_mask)
    tl.store(pair_ptr + 3 * B + rows, tl.where(gap > 0, 1.0, 0.0).to(ACC), mask=row_mask)
    tl.store(reward_ptr + rows, r_w, mask=row_mask)
    tl.store(reward_ptr + B + rows, r_l, mask=row_mask)

    if STORE_GRAD:
        # loss = mean_b softplus(-(gap_b - m_b)) + beta * mean_b (KL_w + KL_l)
        # [BB] d loss / d r_w = -sigmoid(-t) / B; d loss / d r_l = -dr_w. sigmoid(-t) from
        # e^-|t| so that nothing overflows for large |t|
        e = tl.exp(-tl.abs(logits))
        sig_neg = tl.where(logits >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
        dr_w = -sig_neg / B
        dr_w = tl.where(row_mask, dr_w, tl.zeros_like(dr_w))
        c = tl.load(beta_ptr).to(ACC) / B
        g_mu_w = dr_w[:, None] * w_dec[None, :] + c * dkl_dmu_w
        g_mu_l = -dr_w[:, None] * w_dec[None, :] + c * dkl_dmu_l
        g_lv_w = c * dkl_dlv_w
        g_lv_l = c * dkl_dlv_l
        if NOISE_MODE != 0:
            g_lv_w += dr_w[:, None] * w_dec[None, :] * 0.5 * std_w * eps_w
            g_lv_l -= dr_w[:, None] * w_dec[None, :] * 0.5 * std_l * eps_l
        g_idx = rows[:, None] * (2 * L) + cols[None, :]
        tl.store(g_ptr + g_idx, g_mu_w, mask=valid)
        tl.store(g_ptr + g_idx + L, g_lv_w, mask=valid)
        tl.store(g_ptr + B * 2 * L + g_idx, g_mu_l, mask=valid)
        tl.store(g_ptr + B * 2 * L + g_idx + L, g_lv_l, mask=valid)
        dwdec = tl.sum(dr_w[:, None] * (z_w - z_l), axis=0)  # [BL]
        tl.store(dwdec_ptr + pid * L + cols, dwdec, mask=l_mask)


# ------------------------------------------------------------------------------------------------
# shared backward pieces


@triton.jit
def _grad_input_kernel(
    g_ptr,  # [N, 2L] gradient of the pre-activations (contiguous, accumulation dtype)
    w_ptr, stride_w,  # [2L, H] encoder weight
    scale_ptr,  # [1] upstream gradient of the scalar loss
    dx_ptr, stride_dx,  # [N, H] output
    N, H, L,
    H_PER_SPLIT,  # columns of dX per program along grid axis 1 (a multiple of BLOCK_H)
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    h_start, h_end = _h_range(tl.program_id(1), H_PER_SPLIT, H)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_L)
    valid = row_mask[:, None] & (cols < L)[None, :]
    scale = tl.load(scale_ptr)
    g_idx = rows[:, None] * (2 * L) + cols[None, :]
    g_mu = tl.load(g_ptr + g_idx, mask=valid, other=0.0) * scale
    g_lv = tl.load(g_ptr + g_idx + L, mask=valid, other=0.0) * scale
    _store_input_grad(g_mu, g_lv, rows, row_mask, w_ptr, stride_w, dx_ptr, stride_dx, h_start, h_end, L,
                      UPCAST, BLOCK_N, BLOCK_H, BLOCK_L)


@triton.jit
def _grad_weight_rows(
    acc, g_ptr, g_row0, x_ptr, stride_x, N, ks, k_mask, cols_h, h_mask, K,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """acc [BK, BH] += G[g_row0 + n, ks]^T @ x[n, cols_h] over the N rows of x."""
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        g_t = tl.load(g_ptr + (g_row0 + rows)[None, :] * K + ks[:, None], mask=k_mask[:, None] & row_mask[None, :], other=0.0)  # [BK, BN]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols_h[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        if UPCAST:
            x = x.to(acc.dtype)
        acc = tl.dot(g_t.to(x.dtype), x, acc, input_precision="ieee")
    return acc


@triton.jit
def _grad_weight_kernel(
    g_ptr,  # [N1 + N2, K] gradient of the pre-activations (contiguous)
    x1_ptr, stride_x1, N1,  # [N1, H] rows whose gradients are G[:N1]
    x2_ptr, stride_x2, N2,  # [N2, H] rows whose gradients are G[N1:] (N2 may be 0)
    scale_ptr,  # [1] upstream gradient
    dw_ptr, stride_dw,  # [K, H] output
    K, H,
    UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_h = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    cols_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = cols_h < H
    acc = tl.zeros((BLOCK_K, BLOCK_H), dtype=ACC)
    acc = _grad_weight_rows(acc, g_ptr, 0, x1_ptr, stride_x1, N1, ks, k_mask, cols_h, h_mask, K, UPCAST, BLOCK_N)
    acc = _grad_weight_rows(acc, g_ptr, N1, x2_ptr, stride_x2, N2, ks, k_mask, cols_h, h_mask, K, UPCAST, BLOCK_N)
    acc = acc * tl.load(scale_ptr)
    tl.store(dw_ptr + ks[:, None] * stride_dw + cols_h[None, :], acc, mask=k_mask[:, None] & h_mask[None, :])


@triton.jit
def _philox_noise_kernel(
    out_ptr,  # [N, L] output, float32
    seed, row_base,  # Philox seed and the global index of the first row
    N, L,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_L)
    valid = (rows < N)[:, None] & (cols < L)[None, :]
    eps = tl.randn(seed, (row_base + rows)[:, None] * L + cols[None, :])
    tl.store(out_ptr + rows[:, None] * L + cols[None, :], eps, mask=valid)


# ------------------------------------------------------------------------------------------------
# launchers


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_l(latent: int) -> int:
    return max(16, triton.next_power_of_2(latent))


def _block_h(hidden: int, block_l: int, element_size: int) -> int:
    # the two W tiles of a step (2 x BLOCK_H x BLOCK_L) take at most 32 KiB, so that several
    # pipeline stages fit in shared memory (64 x 128 for bf16 at the default L = 128)
    return max(16, min(64, triton.next_power_of_2(hidden), 16384 // (block_l * element_size)))


def _block_rows(rows: int) -> int:
    return 16 if rows <= 2048 else 32


def _num_warps(block_l: int) -> int:
    return 4 if block_l <= 64 else 8


_forced_splits: Optional[int] = None


@contextlib.contextmanager
def forced_h_splits(splits: Optional[int]) -> Iterator[None]:
    """Within the block, force the layout of the forward projection and the input gradient,
    whatever the device: ``splits`` >= 1 runs the separate projection kernel with at most that
    many H ranges (and splits dX as far); 0 runs the single fused kernel (the projection in its
    own 16-row blocks, dX unsplit); None restores the default (the separate projection on CUDA,
    sized by ``h_splits``; the single fused kernel on CPU). For tests (the interpreter has no
    SMs to fill) and for benchmarking the layouts against each other."""
    global _forced_splits
    previous, _forced_splits = _forced_splits, splits
    try:
        yield
    finally:
        _forced_splits = previous


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def h_splits(row_blocks: int, hidden: int, block_h: int, device: torch.device, min_columns: int) -> tuple[int, int]:
    """(number of H ranges, columns per range) for a grid of ``row_blocks`` row blocks.

    A row block alone streams all of W (2L x H) through one SM; when there are fewer row blocks
    than SMs (B = 512 pairs: 16 projection blocks of 64 rows on a 132-SM H100) the grid also
    splits H, up to one wave of programs, each range whole BLOCK_H tiles and at least
    ``min_columns`` wide. CPU (interpreter): no split unless forced (``forced_h_splits``, which
    allows ranges of one tile; 0 counts as 1 here).
    """
    tiles = triton.cdiv(hidden, block_h)
    if _forced_splits is not None:
        wanted = min(_forced_splits, tiles)
    elif device.type == "cuda":
        wanted = min(_multiprocessors(device) // max(row_blocks, 1), hidden // max(min_columns, 1))
    else:
        wanted = 1
    wanted = max(1, wanted)
    per_split = triton.cdiv(tiles, wanted) * block_h
    return triton.cdiv(hidden, per_split), per_split


_PARTIAL_MAX_BLOCK_K = 256


def _partial_blocks(rows: int, k: int, hidden: int, element_size: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_H, BLOCK_K) of the split-H projection: 64-row blocks (the Hopper wgmma
    M tile; four times the rows per W tile of the fused kernels' 16-row blocks), up to 256 of the
    2L outputs in one tile (a 64 x 256 fp32 accumulator is what 8 warps hold without spilling),
    and a W^T tile of at most 16 KiB (with 32 KiB, ptxas spills on sm_90)."""
    block_k = max(16, min(_PARTIAL_MAX_BLOCK_K, triton.next_power_of_2(k)))
    block_n = min(64, max(16, triton.next_power_of_2(rows)))
    block_h = max(16, min(64, triton.next_power_of_2(hidden), 16384 // (block_k * element_size)))
    return block_n, block_h, block_k


def _separate_gemms(device: torch.device) -> bool:
    """Whether the forward projection and the encoder's dX run as their own GEMM kernels: on CUDA
    by default, on CPU only under ``forced_h_splits(n >= 1)``; never under ``forced_h_splits(0)``."""
    if _forced_splits is not None:
        return _forced_splits > 0
    return device.type == "cuda"


def _split_layout(rows: int, sets: int, hidden: int, weight: torch.Tensor, device) -> tuple[int, int]:
    """(H ranges, columns per range) of the forward's projection kernel, or (0, H): no separate
    projection, the single fused kernel projects in its own loop.

    On CUDA the projection is always its own kernel, even in one range (large batches): in
    64-row blocks it gets Hopper's warpgroup MMA without spilling, where the fused kernel's
    16-row blocks, which must also hold the epilogue's tensors, get the per-warp MMA at 255
    registers (``benchmarks/kernel_resources.py``); the cost is one launch and writing and
    reading the fp32 pre-activations (2 x B x 2L x 4 bytes per range).
    """
    if not _separate_gemms(device):
        return 0, hidden
    block_n, block_h, _ = _partial_blocks(rows, weight.shape[0], hidden, weight.element_size())
    return h_splits(sets * triton.cdiv(rows, block_n), hidden, block_h, device, _FORWARD_MIN_COLUMNS)


def _project_partials(x1, x2, weight, acc, splits, per_split):
    """Partial pre-activations [splits, 1 or 2, N, 2L] (acc dtype) of the split-H forward."""
    rows, hidden = x1.shape
    k = weight.shape[0]
    sets = 1 if x2 is None else 2
    block_n, block_h, block_k = _partial_blocks(rows, k, hidden, weight.element_size())
    part = torch.empty(splits, sets, rows, k, device=x1.device, dtype=acc)
    x2 = x1 if x2 is None else x2
    _project_partial_kernel[(sets * triton.cdiv(rows, block_n), splits, triton.cdiv(k, block_k))](
        x1, x1.stride(0), x2, x2.stride(0), weight, weight.stride(0), part, rows, hidden, k, per_split,
        SETS=sets, UPCAST=triton_interpret(), ACC=_tl_acc(acc),
        BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=8 if block_k >= 256 else 4,
    )
    return part


# The forward's H ranges are at least 512 columns: the epilogue reads every range's fp32 partial
# sums (S x 2 x 16 x 2L x 4 bytes a program), so at B = 64 ranges of 128 columns (32 of them)
# would make the 4 epilogue programs read 1 MiB each. dX has no epilogue, but each program
# re-reads its rows' G (64 x 2L fp32), as much as a 128-column slice of W: ranges of >= 256.
_FORWARD_MIN_COLUMNS, _GRAD_INPUT_MIN_COLUMNS = 512, 256


def _dot_operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tl.dot needs one operand dtype: mixed inputs (bf16 rows, fp32 weight) are upcast, so the
    result matches the reference, which computes in the wider dtype."""
    if x.dtype == weight.dtype:
        return x, weight
    wide = torch.promote_types(x.dtype, weight.dtype)
    if wide not in (torch.float32, torch.float64):
        wide = torch.float32
    return x.to(wide), weight.to(wide)


@functools.lru_cache(maxsize=64)
def _constant(value: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1-element tensor holding ``value``, made once per (value, device, dtype): a kernel argument
    that must keep float64 precision, without an allocation and a host-to-device copy each call.
    Read-only: the kernels only load it."""
    return torch.full((1,), value, device=device, dtype=dtype)


def draw_seed() -> int:
    """A Philox seed from torch's default RNG, so ``torch.manual_seed`` makes the noise reproducible."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def philox_noise(seed: int, rows: int, latent_dim: int, device="cpu", row_base: int = 0) -> torch.Tensor:
    """The standard-normal noise [rows, latent_dim] (float32) the kernels draw for ``seed``,
    starting at global row ``row_base`` (the loss's rejected rows start at row B)."""
    out = torch.empty(rows, latent_dim, device=device, dtype=torch.float32)
    if rows == 0:
        return out
    block_l = _block_l(latent_dim)
    _philox_noise_kernel[(triton.cdiv(rows, 16),)](out, seed, row_base, rows, latent_dim, BLOCK_N=16, BLOCK_L=block_l)
    return out


def encode_forward(x, weight, bias, noise, seed, noise_mode, kl_authors):
    """x [N, H], weight [2L, H], bias [2L]|None, noise [N, L]|None -> mu, logvar, z [N, L], kl [N]."""
    rows, hidden = x.shape
    latent = weight.shape[0] // 2
    acc = _acc_dtype(x.dtype)
    x, weight = _dot_operands(x, weight)
    mu = torch.empty(rows, latent, device=x.device, dtype=acc)
    logvar, z = torch.empty_like(mu), torch.empty_like(mu)
    kl = torch.empty(rows, device=x.device, dtype=acc)
    if rows == 0:
        return mu, logvar, z, kl
    block_l = _block_l(latent)
    block_n = _block_rows(rows)
    block_h = _block_h(hidden, block_l, weight.element_size())
    row_blocks = triton.cdiv(rows, block_n)
    splits, per_split = _split_layout(rows, 1, hidden, weight, x.device)
    part = _project_partials(x, None, weight, acc, splits, per_split) if splits > 0 else mu
    noise_arg = noise if noise is not None else mu  # any valid pointer when unused
    _encode_fwd_kernel[(row_blocks,)](
        x, x.stride(0), weight, weight.stride(0), bias if bias is not None else mu,
        noise_arg, noise_arg.stride(0), seed, mu, logvar, z, kl, part, splits, rows, hidden, latent,
        HAS_BIAS=bias is not None, NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, UPCAST=triton_interpret(),
        PRE_PROJECTED=splits > 0,
        ACC=_tl_acc(acc), BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l,
        num_warps=_num_warps(block_l),
    )
    return mu, logvar, z, kl


def encode_backward(x, weight, mu, logvar, grad_mu, grad_logvar, grad_z, grad_kl, noise, seed, noise_mode, kl_authors):
    """Gradients of the encoder: returns (G [N, 2L] accumulation dtype, dX [N, H] in x's dtype)."""
    rows, hidden = x.shape
    latent = weight.shape[0] // 2
    _, weight_c = _dot_operands(x, weight)
    g = torch.empty(rows, 2 * latent, device=x.device, dtype=mu.dtype)
    if rows == 0:
        return g, torch.empty(rows, hidden, device=x.device, dtype=x.dtype)
    block_l = _block_l(latent)
    block_n = _block_rows(rows)
    block_h = _block_h(hidden, block_l, weight_c.element_size())
    row_blocks = triton.cdiv(rows, block_n)
    # with separate GEMM kernels this one computes G only and dX = G W runs in the input-gradient
    # kernel's 64-row HGMMA tiles; otherwise it writes dX itself from its 16-row blocks
    separate = _separate_gemms(x.device)
    if separate:
        dx, splits, per_split = g, 1, hidden  # dx: any valid pointer, not written
    else:
        dx = torch.empty(rows, hidden, device=x.device, dtype=x.dtype)
        splits, per_split = h_splits(row_blocks, hidden, block_h, x.device, _GRAD_INPUT_MIN_COLUMNS)
    noise_arg = noise if noise is not None else mu
    _encode_bwd_kernel[(row_blocks, splits)](
        weight_c, weight_c.stride(0), mu, logvar, grad_mu, grad_logvar, grad_z, grad_kl,
        noise_arg, noise_arg.stride(0), seed, g, dx, dx.stride(0), rows, hidden, latent, per_split,
        NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, UPCAST=triton_interpret(), STORE_DX=not separate,
        BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l, num_warps=_num_warps(block_l),
    )
    if separate:
        dx = grad_input(g, weight_c, _constant(1.0, g.device, g.dtype), x.dtype)
    return g, dx


def pair_loss_forward(chosen, rejected, weight, bias, dec_weight, dec_bias, noise_chosen, noise_rejected,
                      margin, seed, noise_mode, kl_authors, beta, store_grad):
    """Fused forward of the pairwise loss.

    chosen, rejected [B, H]; weight [2L, H]; bias [2L]|None; dec_weight [L]; dec_bias [1]|None;
    noise_* [B, L]|None; margin [B] (any stride)|None.
    Returns (pair [4, B]: preference term, KL_w + KL_l, gap, 1.0 where gap > 0; rewards [2, B];
    G [2B, 2L] or None; dwdec partial sums [programs, L] or None), all in the accumulation dtype:
    one ``pair.mean(1)`` then gives every metric of the batch.
    """
    pairs, hidden = chosen.shape
    latent = weight.shape[0] // 2
    acc = _acc_dtype(chosen.dtype)
    chosen_c, weight_c = _dot_operands(chosen, weight)
    rejected_c, _ = _dot_operands(rejected, weight)
    device = chosen.device
    block_l = _block_l(latent)
    splits, per_split = _split_layout(pairs, 2, hidden, weight_c, device)
    # the epilogue alone (splits > 0) keeps 16-pair blocks at any B: with 32 it spills on sm_90
    block_b = 16 if splits > 0 else _block_rows(pairs)
    block_h = _block_h(hidden, block_l, weight_c.element_size())
    programs = triton.cdiv(pairs, block_b)
    pair = torch.empty(4, pairs, device=device, dtype=acc)
    rewards = torch.empty(2, pairs, device=device, dtype=acc)
    g = torch.empty(2 * pairs, 2 * latent, device=device, dtype=acc) if store_grad else pair
    dwdec = torch.empty(programs, latent, device=device, dtype=acc) if store_grad else pair
    nw = noise_chosen if noise_chosen is not None else pair
    nl = noise_rejected if noise_rejected is not None else pair
    m = margin if margin is not None else pair
    part = _project_partials(chosen_c, rejected_c, weight_c, acc, splits, per_split) if splits > 0 else pair
    _pair_loss_fwd_kernel[(programs,)](
        chosen_c, chosen_c.stride(0), rejected_c, rejected_c.stride(0), weight_c, weight_c.stride(0),
        bias if bias is not None else pair, dec_weight, dec_bias if dec_bias is not None else pair,
        nw, nw.stride(0), nl, nl.stride(0), m, m.stride(0) if margin is not None else 0,
        seed, _constant(float(beta), device, acc), g, pair, rewards, dwdec,
        part, splits, pairs, hidden, latent,
        HAS_BIAS=bias is not None, HAS_DEC_BIAS=dec_bias is not None, HAS_MARGIN=margin is not None,
        NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, STORE_GRAD=store_grad, UPCAST=triton_interpret(),
        PRE_PROJECTED=splits > 0,
        ACC=_tl_acc(acc), BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_L=block_l,
        num_warps=_num_warps(block_l),
    )
    return pair, rewards, (g if store_grad else None), (dwdec if store_grad else None)


def grad_input(g, weight, scale, out_dtype):
    """dX [N, H] (out_dtype) = scale * G [N, 2L] @ weight [2L, H]; scale is a 1-element tensor."""
    rows = g.shape[0]
    latent, hidden = weight.shape[0] // 2, weight.shape[1]
    dx = torch.empty(rows, hidden, device=g.device, dtype=out_dtype)
    if rows == 0:
        return dx
    block_l = _block_l(latent)
    # every row block reads its H range of W once: 64-row blocks read W a quarter as often as
    # 16-row blocks (at B = 512: 32 MiB instead of 128 MiB of L2 traffic), and the split over H
    # keeps the grid as wide; G is the only other operand, so the larger block still fits
    block_n = min(64, max(16, triton.next_power_of_2(rows)))
    # 64 x 64 output tiles make ptxas spill on sm_90 at L = 128 (255 registers); 64 x 32 do not
    block_h = min(_block_h(hidden, block_l, weight.element_size()), 32 if block_n == 64 else 64)
    row_blocks = triton.cdiv(rows, block_n)
    splits, per_split = h_splits(row_blocks, hidden, block_h, g.device, _GRAD_INPUT_MIN_COLUMNS)
    _grad_input_kernel[(row_blocks, splits)](
        g, weight, weight.stride(0), scale, dx, dx.stride(0), rows, hidden, latent, per_split,
        UPCAST=triton_interpret(), BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l,
        num_warps=_num_warps(block_l),
    )
    return dx


def grad_weight(g, x1, x2, scale, out_dtype):
    """dW [K, H] (out_dtype) = scale * G^T [x1; x2]: G [N1 + N2, K], x1 [N1, H], x2 [N2, H]|None."""
    k = g.shape[1]
    hidden = x1.shape[1]
    dw = torch.empty(k, hidden, device=g.device, dtype=out_dtype)
    if x2 is None:
        x2 = x1[:0]
    block_h = 64 if hidden >= 64 else 32 if hidden >= 32 else 16
    block_k = 64 if k >= 64 else 32 if k >= 32 else 16
    grid = (triton.cdiv(k, block_k), triton.cdiv(hidden, block_h))
    _grad_weight_kernel[grid](
        g, x1, x1.stride(0), x1.shape[0], x2, x2.stride(0), x2.shape[0],
        scale, dw, dw.stride(0), k, hidden,
        UPCAST=triton_interpret(), ACC=_tl_acc(g.dtype), BLOCK_K=block_k, BLOCK_N=32, BLOCK_H=block_h,
        num_warps=4,
    )
    return dw


# ------------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps) of the hot path as the launchers set it up at
    the goal size (B = 512 pairs, H = 4096, L = 128, bf16; Philox noise), plus the variants the
    other sizes take (the single fused kernel, biases, margin, explicit noise)."""
    bf16 = "*bf16"
    block = dict(UPCAST=False, BLOCK_H=64, BLOCK_L=128)
    loss_ptrs = dict(xw_ptr=bf16, xl_ptr=bf16, w_ptr=bf16, b_ptr=bf16, wdec_ptr=bf16, bdec_ptr=bf16)
    return [
        (_project_partial_kernel, dict(x1_ptr=bf16, x2_ptr=bf16, w_ptr=bf16),
         dict(SETS=2, UPCAST=False, ACC=tl.float32, BLOCK_N=64, BLOCK_H=32, BLOCK_K=256), 8),
        (_pair_loss_fwd_kernel, loss_ptrs,
         dict(HAS_BIAS=False, HAS_DEC_BIAS=False, HAS_MARGIN=False, NOISE_MODE=NOISE_PHILOX, KL_AUTHORS=False,
              STORE_GRAD=True, PRE_PROJECTED=True, ACC=tl.float32, BLOCK_B=16, **block), 8),
        (_grad_input_kernel, dict(w_ptr=bf16, dx_ptr=bf16), dict(UPCAST=False, BLOCK_N=64, BLOCK_H=32, BLOCK_L=128), 8),
        (_grad_weight_kernel, dict(x1_ptr=bf16, x2_ptr=bf16, dw_ptr=bf16),
         dict(UPCAST=False, ACC=tl.float32, BLOCK_K=64, BLOCK_N=32, BLOCK_H=64), 4),
        (_pair_loss_fwd_kernel, loss_ptrs,
         dict(HAS_BIAS=True, HAS_DEC_BIAS=True, HAS_MARGIN=True, NOISE_MODE=NOISE_PHILOX, KL_AUTHORS=False,
              STORE_GRAD=True, PRE_PROJECTED=False, ACC=tl.float32, BLOCK_B=16, **block), 8),
        (_encode_fwd_kernel, dict(x_ptr=bf16, w_ptr=bf16, b_ptr=bf16),
         dict(HAS_BIAS=False, NOISE_MODE=NOISE_PHILOX, KL_AUTHORS=False, PRE_PROJECTED=True, ACC=tl.float32,
              BLOCK_N=16, **block), 8),
        (_encode_fwd_kernel, dict(x_ptr=bf16, w_ptr=bf16, b_ptr=bf16),
         dict(HAS_BIAS=True, NOISE_MODE=NOISE_EXPLICIT, KL_AUTHORS=True, PRE_PROJECTED=False, ACC=tl.float32,
              BLOCK_N=16, **block), 8),
        (_encode_bwd_kernel, dict(w_ptr=bf16, dx_ptr=bf16),
         dict(NOISE_MODE=NOISE_PHILOX, KL_AUTHORS=False, STORE_DX=False, BLOCK_N=16, **block), 8),
        (_encode_bwd_kernel, dict(w_ptr=bf16, dx_ptr=bf16),
         dict(NOISE_MODE=NOISE_EXPLICIT, KL_AUTHORS=True, STORE_DX=True, BLOCK_N=16, **block), 8),
    ]
