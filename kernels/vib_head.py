"""Fused Triton kernels of the InfoRM head (variational information bottleneck) and its loss.

Notation: N rows, H hidden size, L latent size, B preference pairs, K = 2L encoder outputs.
The encoder weight is in ``nn.Linear`` layout [2L, H]: rows 0..L-1 give mu, rows L..2L-1 logvar.

Kernels, then their launchers, which take and return torch tensors and are named after the ops
they implement (``vib_encode``, ``vib_encode_backward``, ``linear_pairwise_loss``,
``linear_pairwise_loss_backward``; the ops themselves are registered in ``inform_fast.ops.vib_head``
and their reference math is ``inform_fast.reference``):

* ``_encode_fwd_kernel``: [mu, logvar] = x @ W^T (+ b), z = mu + exp(logvar/2) * eps, KL.
* ``_encode_bwd_kernel``: G = [dmu, dlogvar] from the output gradients (eps regenerated from the
  Philox seed, never stored), stores G for dW, and (STORE_DX, the one-kernel layout) dX = G @ W
  in the same pass; on CUDA dX comes from ``_grad_input_kernel`` instead.
* ``_pair_loss_fwd_kernel``: one program owns a block of pairs and projects its chosen and
  rejected rows against the same W tiles, then reparameterises, decodes, computes the per-pair
  loss terms and, because the loss is the last node of the graph, the gradient G of the
  pre-activations (Liger-style): the backward only scales it, so the noise is needed in the
  forward only. It also writes every row's [mu, logvar] (the latent statistics trainers log).
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

Launch configurations come from one place: the ``_*_launches`` planners turn shapes, dtypes, the
target GPU and the split-H layout into ``Launch`` records (kernel, grid, constexprs, warps); the
launchers run them, and ``gpu_configs()`` hands the same records, planned for the goal size on a
132-SM Hopper GPU, to the compile and register-spill checks. The split-H layout is the
launchers' ``h_splits`` argument: None chooses it per batch (separate projection kernel on CUDA,
the single fused kernel on CPU), 0 forces the single fused kernel, n >= 1 the separate
projection with at most n ranges of H.

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

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import triton
import triton.language as tl

from inform_fast._platform import triton_interpret
from inform_fast.reference import KL_PAIR_WEIGHT

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
    coef_ptr,  # [2] weight of the KL term and c of the centring term (tensors: float scalar
    #            arguments would be rounded to fp32)
    g_ptr,  # [2B, 2L] output (STORE_GRAD): d loss / d [mu, logvar], chosen rows then rejected rows
    stats_ptr,  # [2B, 2L] output: [mu, logvar] of the chosen rows, then of the rejected rows
    pair_ptr,  # [5, B] output: -logsigmoid(r_w - r_l - margin), KL_w + KL_l, r_w - r_l, [r_w > r_l], (r_w + r_l)^2
    reward_ptr,  # [2, B] output: r_w, r_l
    dwdec_ptr,  # [programs, L + 1] output (STORE_GRAD): this program's part of d loss / d [w_dec, b_dec]
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
    s_idx = rows[:, None] * (2 * L) + cols[None, :]
    tl.store(stats_ptr + s_idx, mu_w, mask=valid)
    tl.store(stats_ptr + s_idx + L, lv_w, mask=valid)
    tl.store(stats_ptr + B * 2 * L + s_idx, mu_l, mask=valid)
    tl.store(stats_ptr + B * 2 * L + s_idx + L, lv_l, mask=valid)

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
    total = r_w + r_l
    tl.store(pair_ptr + 4 * B + rows, total * total, mask=row_mask)
    tl.store(reward_ptr + rows, r_w, mask=row_mask)
    tl.store(reward_ptr + B + rows, r_l, mask=row_mask)

    if STORE_GRAD:
        # loss = mean_b softplus(-(gap_b - m_b)) + beta * mean_b (KL_w + KL_l) + c * mean_b (r_w + r_l)^2
        # [BB] d loss / d r_w = (-sigmoid(-t) + 2 c (r_w + r_l)) / B, d loss / d r_l =
        # (sigmoid(-t) + 2 c (r_w + r_l)) / B. sigmoid(-t) from e^-|t| so that nothing
        # overflows for large |t|
        e = tl.exp(-tl.abs(logits))
        sig_neg = tl.where(logits >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
        centring = 2.0 * tl.load(coef_ptr + 1).to(ACC) * total
        zero_b = tl.zeros_like(sig_neg)
        dr_w = tl.where(row_mask, (centring - sig_neg) / B, zero_b)
        dr_l = tl.where(row_mask, (centring + sig_neg) / B, zero_b)
        c = tl.load(coef_ptr).to(ACC) / B
        g_mu_w = dr_w[:, None] * w_dec[None, :] + c * dkl_dmu_w
        g_mu_l = dr_l[:, None] * w_dec[None, :] + c * dkl_dmu_l
        g_lv_w = c * dkl_dlv_w
        g_lv_l = c * dkl_dlv_l
        if NOISE_MODE != 0:
            g_lv_w += dr_w[:, None] * w_dec[None, :] * 0.5 * std_w * eps_w
            g_lv_l += dr_l[:, None] * w_dec[None, :] * 0.5 * std_l * eps_l
        tl.store(g_ptr + s_idx, g_mu_w, mask=valid)  # G has the layout of the stats
        tl.store(g_ptr + s_idx + L, g_lv_w, mask=valid)
        tl.store(g_ptr + B * 2 * L + s_idx, g_mu_l, mask=valid)
        tl.store(g_ptr + B * 2 * L + s_idx + L, g_lv_l, mask=valid)
        dwdec = tl.sum(dr_w[:, None] * z_w + dr_l[:, None] * z_l, axis=0)  # [BL]
        tl.store(dwdec_ptr + pid * (L + 1) + cols, dwdec, mask=l_mask)
        tl.store(dwdec_ptr + pid * (L + 1) + L, tl.sum(dr_w + dr_l, axis=0))


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
# launch planning: the one source of block sizes, grids and layouts (launchers and gpu_configs)


@dataclass(frozen=True)
class Target:
    """What a launch is planned for: the device kind, its multiprocessor count (CUDA) and whether
    the kernels run in Triton's interpreter (which needs fp32 dot operands, see UPCAST)."""

    kind: str  # "cuda" or "cpu"
    multiprocessors: int = 0
    interpret: bool = False


# the goal size's GPU: an H100 / H200 (sm_90, 132 SMs), kernels compiled
HOPPER = Target("cuda", 132, interpret=False)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def target_of(device: torch.device) -> Target:
    """The ``Target`` of tensors on ``device`` in this process."""
    if device.type == "cuda":
        return Target("cuda", _multiprocessors(device), triton_interpret())
    return Target(device.type, 0, triton_interpret())


@dataclass(frozen=True)
class Launch:
    """One kernel launch as planned: ``launch(*runtime_args)`` runs it; ``gpu_configs()`` compiles it."""

    kernel: object  # a @triton.jit function
    grid: tuple
    constexprs: dict
    num_warps: int
    pointer_types: dict = field(default_factory=dict)  # Triton types of the pointers that are not fp32

    def __call__(self, *args) -> None:
        self.kernel[self.grid](*args, **self.constexprs, num_warps=self.num_warps)


_POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64"}


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


# The forward's H ranges are at least 512 columns: the epilogue reads every range's fp32 partial
# sums (S x 2 x 16 x 2L x 4 bytes a program), so at B = 64 ranges of 128 columns (32 of them)
# would make the 4 epilogue programs read 1 MiB each. dX has no epilogue, but each program
# re-reads its rows' G (64 x 2L fp32), as much as a 128-column slice of W: ranges of >= 256.
_FORWARD_MIN_COLUMNS, _GRAD_INPUT_MIN_COLUMNS = 512, 256
_PARTIAL_MAX_BLOCK_K = 256


def split_h(row_blocks: int, hidden: int, block_h: int, target: Target, min_columns: int,
            h_splits: Optional[int] = None) -> tuple[int, int]:
    """(number of H ranges, columns per range) for a grid of ``row_blocks`` row blocks.

    A row block alone streams all of W (2L x H) through one SM; when there are fewer row blocks
    than SMs (B = 512 pairs: 16 projection blocks of 64 rows on a 132-SM H100) the grid also
    splits H, up to one wave of programs, each range whole BLOCK_H tiles and at least
    ``min_columns`` wide. CPU (interpreter): one range. ``h_splits`` given: at most that many
    ranges, down to one tile each, whatever the device (0 counts as 1 here).
    """
    tiles = triton.cdiv(hidden, block_h)
    if h_splits is not None:
        wanted = min(h_splits, tiles)
    elif target.kind == "cuda":
        wanted = min(target.multiprocessors // max(row_blocks, 1), hidden // max(min_columns, 1))
    else:
        wanted = 1
    wanted = max(1, wanted)
    per_split = triton.cdiv(tiles, wanted) * block_h
    return triton.cdiv(hidden, per_split), per_split


def _partial_blocks(rows: int, k: int, hidden: int, element_size: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_H, BLOCK_K) of the split-H projection: 64-row blocks (the Hopper wgmma
    M tile; four times the rows per W tile of the fused kernels' 16-row blocks), up to 256 of the
    2L outputs in one tile (a 64 x 256 fp32 accumulator is what 8 warps hold without spilling),
    and a W^T tile of at most 16 KiB (with 32 KiB, ptxas spills on sm_90)."""
    block_k = max(16, min(_PARTIAL_MAX_BLOCK_K, triton.next_power_of_2(k)))
    block_n = min(64, max(16, triton.next_power_of_2(rows)))
    block_h = max(16, min(64, triton.next_power_of_2(hidden), 16384 // (block_k * element_size)))
    return block_n, block_h, block_k


def _separate_gemms(target: Target, h_splits: Optional[int]) -> bool:
    """Whether the forward projection and the encoder's dX run as their own GEMM kernels: on CUDA
    by default, on CPU only with ``h_splits`` >= 1; never with ``h_splits`` = 0."""
    if h_splits is not None:
        return h_splits > 0
    return target.kind == "cuda"


def _split_layout(rows: int, sets: int, hidden: int, k: int, element_size: int, target: Target,
                  h_splits: Optional[int]) -> tuple[int, int]:
    """(H ranges, columns per range) of the forward's projection kernel, or (0, H): no separate
    projection, the single fused kernel projects in its own loop.

    On CUDA the projection is always its own kernel, even in one range (large batches): in
    64-row blocks it gets Hopper's warpgroup MMA without spilling, where the fused kernel's
    16-row blocks, which must also hold the epilogue's tensors, get the per-warp MMA at 255
    registers (``benchmarks/kernel_resources.py``); the cost is one launch and writing and
    reading the fp32 pre-activations (2 x B x 2L x 4 bytes per range).
    """
    if not _separate_gemms(target, h_splits):
        return 0, hidden
    block_n, block_h, _ = _partial_blocks(rows, k, hidden, element_size)
    return split_h(sets * triton.cdiv(rows, block_n), hidden, block_h, target, _FORWARD_MIN_COLUMNS, h_splits)


def _projection_launch(rows, sets, hidden, k, dtype, acc, splits, target) -> Launch:
    block_n, block_h, block_k = _partial_blocks(rows, k, hidden, dtype.itemsize)
    pointer = _POINTER[dtype]
    return Launch(
        _project_partial_kernel, (sets * triton.cdiv(rows, block_n), splits, triton.cdiv(k, block_k)),
        dict(SETS=sets, UPCAST=target.interpret, ACC=_tl_acc(acc), BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=block_k),
        8 if block_k >= 256 else 4, dict(x1_ptr=pointer, x2_ptr=pointer, w_ptr=pointer),
    )


def _encode_forward_launches(rows, hidden, latent, dtype, acc, bias_dtype, noise_mode, kl_authors, target, h_splits):
    """([projection,] encoder) launches and the (H ranges, columns per range) of the projection."""
    block_l = _block_l(latent)
    block_n = _block_rows(rows)
    block_h = _block_h(hidden, block_l, dtype.itemsize)
    splits, per_split = _split_layout(rows, 1, hidden, 2 * latent, dtype.itemsize, target, h_splits)
    launches = [_projection_launch(rows, 1, hidden, 2 * latent, dtype, acc, splits, target)] if splits > 0 else []
    pointer = _POINTER[dtype]
    launches.append(Launch(
        _encode_fwd_kernel, (triton.cdiv(rows, block_n),),
        dict(HAS_BIAS=bias_dtype is not None, NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, UPCAST=target.interpret,
             PRE_PROJECTED=splits > 0, ACC=_tl_acc(acc), BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l),
        _num_warps(block_l), dict(x_ptr=pointer, w_ptr=pointer, b_ptr=_POINTER[bias_dtype or dtype]),
    ))
    return launches, splits, per_split


def _encode_backward_launch(rows, hidden, latent, dtype, x_dtype, noise_mode, kl_authors, store_dx, target, h_splits):
    """The encoder-gradient launch and the columns of dX per program (its grid's axis 1)."""
    block_l = _block_l(latent)
    block_n = _block_rows(rows)
    block_h = _block_h(hidden, block_l, dtype.itemsize)
    row_blocks = triton.cdiv(rows, block_n)
    splits, per_split = (split_h(row_blocks, hidden, block_h, target, _GRAD_INPUT_MIN_COLUMNS, h_splits)
                         if store_dx else (1, hidden))
    return Launch(
        _encode_bwd_kernel, (row_blocks, splits),
        dict(NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, UPCAST=target.interpret, STORE_DX=store_dx,
             BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l),
        _num_warps(block_l), dict(w_ptr=_POINTER[dtype], dx_ptr=_POINTER[x_dtype]),
    ), per_split


def _pair_loss_launches(pairs, hidden, latent, dtype, acc, bias_dtype, dec_weight_dtype, dec_bias_dtype, has_margin,
                        noise_mode, kl_authors, store_grad, target, h_splits):
    """([projection,] loss) launches and the projection's (H ranges, columns per range)."""
    block_l = _block_l(latent)
    splits, per_split = _split_layout(pairs, 2, hidden, 2 * latent, dtype.itemsize, target, h_splits)
    # the epilogue alone (splits > 0) keeps 16-pair blocks at any B: with 32 it spills on sm_90
    block_b = 16 if splits > 0 else _block_rows(pairs)
    block_h = _block_h(hidden, block_l, dtype.itemsize)
    launches = [_projection_launch(pairs, 2, hidden, 2 * latent, dtype, acc, splits, target)] if splits > 0 else []
    pointer = _POINTER[dtype]
    launches.append(Launch(
        _pair_loss_fwd_kernel, (triton.cdiv(pairs, block_b),),
        dict(HAS_BIAS=bias_dtype is not None, HAS_DEC_BIAS=dec_bias_dtype is not None, HAS_MARGIN=has_margin,
             NOISE_MODE=noise_mode, KL_AUTHORS=kl_authors, STORE_GRAD=store_grad, UPCAST=target.interpret,
             PRE_PROJECTED=splits > 0, ACC=_tl_acc(acc), BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_L=block_l),
        _num_warps(block_l),
        dict(xw_ptr=pointer, xl_ptr=pointer, w_ptr=pointer, b_ptr=_POINTER[bias_dtype or dtype],
             wdec_ptr=_POINTER[dec_weight_dtype], bdec_ptr=_POINTER[dec_bias_dtype or dec_weight_dtype]),
    ))
    return launches, splits, per_split


def _grad_input_launch(rows, hidden, latent, dtype, out_dtype, target, h_splits):
    """The dX launch and its columns per program."""
    block_l = _block_l(latent)
    # every row block reads its H range of W once: 64-row blocks read W a quarter as often as
    # 16-row blocks (at B = 512: 32 MiB instead of 128 MiB of L2 traffic), and the split over H
    # keeps the grid as wide; G is the only other operand, so the larger block still fits
    block_n = min(64, max(16, triton.next_power_of_2(rows)))
    # 64 x 64 output tiles make ptxas spill on sm_90 at L = 128 (255 registers); 64 x 32 do not
    block_h = min(_block_h(hidden, block_l, dtype.itemsize), 32 if block_n == 64 else 64)
    row_blocks = triton.cdiv(rows, block_n)
    splits, per_split = split_h(row_blocks, hidden, block_h, target, _GRAD_INPUT_MIN_COLUMNS, h_splits)
    return Launch(
        _grad_input_kernel, (row_blocks, splits),
        dict(UPCAST=target.interpret, BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_L=block_l),
        _num_warps(block_l), dict(w_ptr=_POINTER[dtype], dx_ptr=_POINTER[out_dtype]),
    ), per_split


def _grad_weight_launch(k, hidden, acc, x_dtype, out_dtype, target) -> Launch:
    block_h = 64 if hidden >= 64 else 32 if hidden >= 32 else 16
    block_k = 64 if k >= 64 else 32 if k >= 32 else 16
    return Launch(
        _grad_weight_kernel, (triton.cdiv(k, block_k), triton.cdiv(hidden, block_h)),
        dict(UPCAST=target.interpret, ACC=_tl_acc(acc), BLOCK_K=block_k, BLOCK_N=32, BLOCK_H=block_h),
        4, dict(x1_ptr=_POINTER[x_dtype], x2_ptr=_POINTER[x_dtype], dw_ptr=_POINTER[out_dtype]),
    )


# ------------------------------------------------------------------------------------------------
# launchers


def _dot_operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tl.dot needs one operand dtype: mixed inputs (bf16 rows, fp32 weight) are upcast, so the
    result matches the reference, which computes in the wider dtype."""
    x, weight = x.contiguous(), weight.contiguous()
    if x.dtype == weight.dtype:
        return x, weight
    wide = torch.promote_types(x.dtype, weight.dtype)
    if wide not in (torch.float32, torch.float64):
        wide = torch.float32
    return x.to(wide), weight.to(wide)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tensor holding ``values``, made once per (values, device, dtype): kernel arguments that
    must keep float64 precision, without an allocation and a host-to-device copy each call.
    Read-only: the kernels only load it."""
    return torch.tensor(values, device=device, dtype=dtype)


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


def _noise_mode(has_noise: bool, seed: Optional[int]) -> int:
    return NOISE_EXPLICIT if has_noise else NOISE_PHILOX if seed is not None else NOISE_NONE


def vib_encode(pooled, weight, bias, noise, seed, kl_mode, h_splits=None):
    """The op "vib_encode" on the GPU (or the interpreter).

    pooled [N, H] (fp16 / bf16 / fp32 / fp64), weight [2L, H], bias [2L] | None; noise [N, L] |
    None; seed: an int for Philox noise drawn in-kernel (when ``noise`` is None), None for z = mu.
    Returns mu, logvar, z [N, L] and kl [N] in the accumulation dtype.
    """
    rows, hidden = pooled.shape
    latent = weight.shape[0] // 2
    acc = _acc_dtype(pooled.dtype)
    x, w = _dot_operands(pooled, weight)
    mu = torch.empty(rows, latent, device=x.device, dtype=acc)
    logvar, z = torch.empty_like(mu), torch.empty_like(mu)
    kl = torch.empty(rows, device=x.device, dtype=acc)
    if rows == 0:
        return mu, logvar, z, kl
    launches, splits, per_split = _encode_forward_launches(
        rows, hidden, latent, w.dtype, acc, None if bias is None else bias.dtype, _noise_mode(noise is not None, seed),
        kl_mode == "authors", target_of(x.device), h_splits)
    part = mu  # any valid pointer when there is no separate projection
    if splits > 0:
        part = torch.empty(splits, 1, rows, 2 * latent, device=x.device, dtype=acc)
        launches[0](x, x.stride(0), x, x.stride(0), w, w.stride(0), part, rows, hidden, 2 * latent, per_split)
    noise = noise.to(acc).contiguous() if noise is not None else mu
    launches[-1](
        x, x.stride(0), w, w.stride(0), bias.contiguous() if bias is not None else mu, noise, noise.stride(0),
        seed or 0, mu, logvar, z, kl, part, splits, rows, hidden, latent,
    )
    return mu, logvar, z, kl


def vib_encode_backward(grad_mu, grad_logvar, grad_z, grad_kl, pooled, weight, mu, logvar, noise, seed, kl_mode,
                        need_input, need_weight, h_splits=None):
    """Gradients of "vib_encode": (G [N, 2L] accumulation dtype, dX [N, H] in pooled's dtype,
    dW [2L, H] in weight's dtype); dX and dW are empty [0] tensors when not needed. ``noise`` and
    ``seed`` as in the forward (the Philox noise is regenerated, never stored)."""
    rows, hidden = pooled.shape
    latent = weight.shape[0] // 2
    x, w = _dot_operands(pooled, weight)
    g = torch.empty(rows, 2 * latent, device=x.device, dtype=mu.dtype)
    nothing = g.new_empty(0)
    if rows == 0:
        return (g, pooled.new_zeros(rows, hidden) if need_input else nothing,
                weight.new_zeros(weight.shape) if need_weight else nothing)
    target = target_of(x.device)
    # with separate GEMM kernels this one computes G only and dX = G W runs in the input-gradient
    # kernel's 64-row HGMMA tiles; otherwise it writes dX itself from its 16-row blocks
    separate = _separate_gemms(target, h_splits)
    store_dx = need_input and not separate
    launch, per_split = _encode_backward_launch(rows, hidden, latent, w.dtype, pooled.dtype, _noise_mode(noise is not None, seed),
                                                kl_mode == "authors", store_dx, target, h_splits)
    dx = torch.empty(rows, hidden, device=x.device, dtype=pooled.dtype) if store_dx else g
    grads = [t.to(mu.dtype).contiguous() for t in (grad_mu, grad_logvar, grad_z, grad_kl)]
    noise = noise.to(mu.dtype).contiguous() if noise is not None else mu
    launch(w, w.stride(0), mu.contiguous(), logvar.contiguous(), *grads, noise, noise.stride(0), seed or 0,
           g, dx, dx.stride(0), rows, hidden, latent, per_split)
    one = _constant((1.0,), g.device, g.dtype)
    if need_input and separate:
        dx = grad_input(g, w, one, pooled.dtype, h_splits)
    return g, dx if need_input else nothing, grad_weight(g, x, None, one, weight.dtype) if need_weight else nothing


def linear_pairwise_loss(chosen, rejected, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                         noise_chosen, noise_rejected, margin, seed, kl_mode, beta, center_rewards_coefficient,
                         store_grad, h_splits=None):
    """The op "linear_pairwise_loss" on the GPU (or the interpreter).

    chosen, rejected [B, H]; encoder_weight [2L, H]; encoder_bias [2L] | None; decoder_weight
    [1, L]; decoder_bias [1] | None; noise_chosen, noise_rejected: both [B, L] or both None;
    margin [B] (any stride) | None; seed: an int for Philox noise when no noise is given, None
    for z = mu. Returns, in the accumulation dtype: loss [], terms [5] (preference loss, kl,
    reward margin, accuracy, mean (r_w + r_l)^2), rewards [2, B], stats [2B, 2L] (every row's
    [mu, logvar]), and with ``store_grad`` G = d loss / d stats [2B, 2L] and d loss / d [w_dec, b_dec]
    [L + 1] (else two empty [0] tensors).
    """
    pairs, hidden = chosen.shape
    latent = encoder_weight.shape[0] // 2
    acc = _acc_dtype(chosen.dtype)
    chosen_c, weight_c = _dot_operands(chosen, encoder_weight)
    rejected_c, _ = _dot_operands(rejected, encoder_weight)
    device = chosen.device
    launches, splits, per_split = _pair_loss_launches(
        pairs, hidden, latent, weight_c.dtype, acc, None if encoder_bias is None else encoder_bias.dtype,
        decoder_weight.dtype, None if decoder_bias is None else decoder_bias.dtype, margin is not None,
        _noise_mode(noise_chosen is not None, seed), kl_mode == "authors", store_grad, target_of(device), h_splits)
    programs = launches[-1].grid[0]
    pair = torch.empty(5, pairs, device=device, dtype=acc)
    rewards = torch.empty(2, pairs, device=device, dtype=acc)
    stats = torch.empty(2 * pairs, 2 * latent, device=device, dtype=acc)
    g = torch.empty(2 * pairs, 2 * latent, device=device, dtype=acc) if store_grad else pair
    dwdec = torch.empty(programs, latent + 1, device=device, dtype=acc) if store_grad else pair  # [w_dec | b_dec]
    part = pair  # any valid pointer when there is no separate projection
    if splits > 0:
        part = torch.empty(splits, 2, pairs, 2 * latent, device=device, dtype=acc)
        launches[0](chosen_c, chosen_c.stride(0), rejected_c, rejected_c.stride(0), weight_c, weight_c.stride(0), part,
                    pairs, hidden, 2 * latent, per_split)
    noise_w = noise_chosen.to(acc).contiguous() if noise_chosen is not None else pair
    noise_l = noise_rejected.to(acc).contiguous() if noise_rejected is not None else pair
    margin_arg = margin.to(device=device, dtype=acc) if margin is not None else pair
    # the kernel's KL term is mean_b[KL_w + KL_l]; the mode's weight of it folds into beta
    kl_weight = KL_PAIR_WEIGHT[kl_mode]
    coefficients = _constant((float(beta) * kl_weight, float(center_rewards_coefficient)), device, acc)
    launches[-1](
        chosen_c, chosen_c.stride(0), rejected_c, rejected_c.stride(0), weight_c, weight_c.stride(0),
        encoder_bias.contiguous() if encoder_bias is not None else pair, decoder_weight.reshape(-1).contiguous(),
        decoder_bias.reshape(-1).contiguous() if decoder_bias is not None else pair,
        noise_w, noise_w.stride(0), noise_l, noise_l.stride(0), margin_arg, margin_arg.stride(0) if margin is not None else 0,
        seed or 0, coefficients, g, stats, pair, rewards, dwdec, part, splits, pairs, hidden, latent,
    )
    terms = pair.mean(dim=1)  # one reduction for every metric of the batch
    terms[1] *= kl_weight
    loss = terms[0] + float(beta) * terms[1] + float(center_rewards_coefficient) * terms[4]
    nothing = pair.new_empty(0)
    return loss, terms, rewards, stats, (g if store_grad else nothing), (dwdec.sum(0) if store_grad else nothing)


def linear_pairwise_loss_backward(grad_loss, chosen, rejected, encoder_weight, grad, need_input, need_weight, h_splits=None):
    """Input and encoder-weight gradients of "linear_pairwise_loss" from its stored G [2B, 2L]:
    (dX [2B, H] in chosen's dtype, chosen rows then rejected rows; dW [2L, H] in the weight's
    dtype), each an empty [0] tensor when not needed."""
    scale = grad_loss.to(grad.dtype).reshape(1).contiguous()
    chosen_c, weight_c = _dot_operands(chosen, encoder_weight)
    nothing = grad.new_empty(0)
    dx = grad_input(grad, weight_c, scale, chosen.dtype, h_splits) if need_input else nothing
    if not need_weight:
        return dx, nothing
    rejected_c = _dot_operands(rejected, encoder_weight)[0]
    return dx, grad_weight(grad, chosen_c, rejected_c, scale, encoder_weight.dtype)


def grad_input(g, weight, scale, out_dtype, h_splits=None):
    """dX [N, H] (out_dtype) = scale * G [N, 2L] @ weight [2L, H]; scale is a 1-element tensor."""
    rows = g.shape[0]
    latent, hidden = weight.shape[0] // 2, weight.shape[1]
    dx = torch.empty(rows, hidden, device=g.device, dtype=out_dtype)
    if rows == 0:
        return dx
    launch, per_split = _grad_input_launch(rows, hidden, latent, weight.dtype, out_dtype, target_of(g.device), h_splits)
    launch(g.contiguous(), weight, weight.stride(0), scale, dx, dx.stride(0), rows, hidden, latent, per_split)
    return dx


def grad_weight(g, x1, x2, scale, out_dtype):
    """dW [K, H] (out_dtype) = scale * G^T [x1; x2]: G [N1 + N2, K], x1 [N1, H], x2 [N2, H]|None."""
    k = g.shape[1]
    hidden = x1.shape[1]
    dw = torch.empty(k, hidden, device=g.device, dtype=out_dtype)
    if x2 is None:
        x2 = x1[:0]
    launch = _grad_weight_launch(k, hidden, g.dtype, x1.dtype, out_dtype, target_of(g.device))
    launch(g.contiguous(), x1, x1.stride(0), x1.shape[0], x2, x2.stride(0), x2.shape[0], scale, dw, dw.stride(0), k, hidden)
    return dw


# ------------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)


def gpu_configs() -> list[tuple]:
    """(kernel, pointer types, constexprs, num_warps) of the launches the planners above make on a
    132-SM Hopper GPU: the hot path at the goal size (B = 512 pairs, H = 4096, L = 128, bf16,
    Philox noise; the projection, the loss epilogue, dX and dW), then the variants other sizes
    and options take (the single fused kernels with biases, margin, explicit noise, the authors' KL)."""
    bf16 = torch.bfloat16
    pairs, hidden, latent = 512, 4096, 128
    acc = torch.float32
    hot, _, _ = _pair_loss_launches(pairs, hidden, latent, bf16, acc, None, bf16, None, False, NOISE_PHILOX, False, True,
                                    HOPPER, None)
    single_loss, _, _ = _pair_loss_launches(pairs, hidden, latent, bf16, acc, bf16, bf16, bf16, True, NOISE_PHILOX, False,
                                            True, HOPPER, 0)
    encode, _, _ = _encode_forward_launches(pairs, hidden, latent, bf16, acc, None, NOISE_PHILOX, False, HOPPER, None)
    single_encode, _, _ = _encode_forward_launches(pairs, hidden, latent, bf16, acc, bf16, NOISE_EXPLICIT, True, HOPPER, 0)
    launches = hot + [
        _grad_input_launch(2 * pairs, hidden, latent, bf16, bf16, HOPPER, None)[0],
        _grad_weight_launch(2 * latent, hidden, acc, bf16, bf16, HOPPER),
        single_loss[-1],
        encode[-1],
        single_encode[-1],
        _encode_backward_launch(pairs, hidden, latent, bf16, bf16, NOISE_PHILOX, False,
                                not _separate_gemms(HOPPER, None), HOPPER, None)[0],
        _encode_backward_launch(pairs, hidden, latent, bf16, bf16, NOISE_EXPLICIT, True,
                                not _separate_gemms(HOPPER, 0), HOPPER, 0)[0],
    ]
    return [(launch.kernel, launch.pointer_types, launch.constexprs, launch.num_warps) for launch in launches]
