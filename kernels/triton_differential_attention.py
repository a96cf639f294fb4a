"""Triton kernels of fused differential attention (FlashAttention-2 style), forward and backward.

    out = softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v        (optionally causal)

Forward: one program per (query block, batch x head) walks the keys once, keeping two online
softmaxes (two running max / sum pairs, two fp32 accumulators); each key block's V tile is loaded
once and multiplied by both probability tiles. It writes ``out``, the second map's output ``out2``
(the backward needs rowsum(dO * O2), and lam's gradient is -sum(dO * O2)) and both log-sum-exps.

Backward (scores recomputed from the saved log-sum-exps): with dP = dO V^T shared by both maps,

    dS1 = P1 * (dP - D1)        dS2 = -lam * P2 * (dP - D2)        D_i = rowsum(dO * O_i)
    dV  = (P1 - lam P2)^T dO    dK_i = s dS_i^T Q_i                dQ_i = s dS_i K_i

so the backward costs one ordinary D = 2 * Dk attention backward. ``dk, dv`` run per key block over
the query blocks, ``dq`` per query block over the key blocks (no atomics).

Legend: B batch, H heads, L tokens, Dk the width of each query/key half, Dv the value width. The
kernels read (B, H, L, *) inputs through TMA tensor descriptors built from their strides (tiles past
the sequence or the head width read as zero), so halves taken with ``chunk`` need no copy.
Exponentials are base 2 (log2(e) folded into the scale); log-sum-exps are stored in natural-log
units, as the reference returns them. Measured on an H200: apps/bench/results/differential-h200.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634


@triton.jit
def _tile(desc, b, h, start, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows [start, start + ROWS) of (b, h) through a (B, H, L, D) TMA descriptor: a (ROWS, BLOCK_D)
    tile, rows past the sequence and columns past D read as zero."""
    return desc.load([b, h, start, 0]).reshape(ROWS, BLOCK_D)


@triton.jit
def _online_softmax_step(acc, row_sum, m, s, v, qk_scale, PRECISION: tl.constexpr):
    """One key block of one map: s (BLOCK_M, BLOCK_N) raw scores (masked ones -inf)."""
    row_max = tl.max(s, axis=1) * qk_scale
    m_new = tl.maximum(m, row_max)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m - m_new)
    row_sum = row_sum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, row_sum, m_new


@triton.jit
def _forward_block(
    acc1, acc2, l1, l2, m1, m2, q1, q2, k1_desc, k2_desc, v_desc, b, h,
    rows, lo, hi, seq_len, qk_scale,
    BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Key blocks [lo, hi): both online softmaxes; ``MASKED`` applies the causal and length masks."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k1 = _tile(k1_desc, b, h, start, BLOCK_N, BLOCK_DK)
        k2 = _tile(k2_desc, b, h, start, BLOCK_N, BLOCK_DK)
        v = _tile(v_desc, b, h, start, BLOCK_N, BLOCK_DV)
        if MASKED:
            cols = start + offs_n
            visible = cols[None, :] < seq_len
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None])
        # Both score products, then both softmaxes: Triton 3.6 waits for each score product at
        # once, but the first map's P V product runs on the tensor cores during the second softmax.
        s1 = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
        s2 = tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
        if MASKED:
            s1 = tl.where(visible, s1, float("-inf"))
        acc1, l1, m1 = _online_softmax_step(acc1, l1, m1, s1, v, qk_scale, PRECISION)
        if MASKED:
            s2 = tl.where(visible, s2, float("-inf"))
        acc2, l2, m2 = _online_softmax_step(acc2, l2, m2, s2, v, qk_scale, PRECISION)
    return acc1, acc2, l1, l2, m1, m2


@triton.jit
def _differential_forward_kernel(
    q1_desc, q2_desc, k1_desc, k2_desc, v_desc, lam_ptr, o_ptr, o2_ptr, lse_ptr,
    heads, seq_len, dim_v, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    # The longest (last, under the causal mask) query blocks are launched first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    start_m = pid_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    q1 = _tile(q1_desc, b, h, start_m, BLOCK_M, BLOCK_DK)
    q2 = _tile(q2_desc, b, h, start_m, BLOCK_M, BLOCK_DK)

    # Finite start: a block whose keys are all masked gives exp2(-inf - m) = 0, never inf - inf.
    m1 = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    m2 = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    l2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    # Key blocks every query of the block sees in full run without masks; the rest with them.
    if CAUSAL:
        full_end = start_m
        tail_end = tl.minimum(start_m + BLOCK_M, seq_len)
    else:
        full_end = (seq_len // BLOCK_N) * BLOCK_N
        tail_end = seq_len
    acc1, acc2, l1, l2, m1, m2 = _forward_block(
        acc1, acc2, l1, l2, m1, m2, q1, q2, k1_desc, k2_desc, v_desc, b, h,
        rows, 0, full_end, seq_len, qk_scale,
        BLOCK_N, BLOCK_DK, BLOCK_DV, CAUSAL, False, PRECISION,
    )
    acc1, acc2, l1, l2, m1, m2 = _forward_block(
        acc1, acc2, l1, l2, m1, m2, q1, q2, k1_desc, k2_desc, v_desc, b, h,
        rows, full_end, tail_end, seq_len, qk_scale,
        BLOCK_N, BLOCK_DK, BLOCK_DV, CAUSAL, True, PRECISION,
    )
    lam = tl.load(lam_ptr).to(tl.float32)
    out2 = acc2 / l2[:, None]
    out = acc1 / l1[:, None] - lam * out2
    # Outputs and log-sum-exps are contiguous (B, H, L, Dv) and (B, H, 2, L).
    bh = pid_bh.to(tl.int64)
    o_off = (bh * seq_len + rows)[:, None] * dim_v + offs_dv[None, :]
    o_mask = (rows[:, None] < seq_len) & (offs_dv[None, :] < dim_v)
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=o_mask)
    tl.store(o2_ptr + o_off, out2.to(o2_ptr.dtype.element_ty), mask=o_mask)
    ln2 = 0.6931471805599453
    in_rows = rows < seq_len
    tl.store(lse_ptr + (bh * 2) * seq_len + rows, (m1 + tl.math.log2(l1)) * ln2, mask=in_rows)
    tl.store(lse_ptr + (bh * 2 + 1) * seq_len + rows, (m2 + tl.math.log2(l2)) * ln2, mask=in_rows)


@triton.jit
def _differential_stats_kernel(
    do_ptr, o_ptr, o2_ptr, lse_ptr, lam_ptr, stats_ptr, rows_total, seq_len, dim_v,
    BLOCK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """stats (B, H, 4, L): both log-sum-exps in base 2, D1 = rowsum(dO * O1) (O1 = out + lam * O2)
    and D2 = rowsum(dO * O2)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_rows = rows < rows_total
    mask = in_rows[:, None] & (offs_dv[None, :] < dim_v)
    off = rows.to(tl.int64)[:, None] * dim_v + offs_dv[None, :]
    do = tl.load(do_ptr + off, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + off, mask=mask, other=0.0).to(tl.float32)
    o2 = tl.load(o2_ptr + off, mask=mask, other=0.0).to(tl.float32)
    lam = tl.load(lam_ptr).to(tl.float32)
    d2 = tl.sum(do * o2, axis=1)
    d1 = tl.sum(do * o, axis=1) + lam * d2
    bh = rows.to(tl.int64) // seq_len
    pos = rows % seq_len
    lse1 = tl.load(lse_ptr + (bh * 2) * seq_len + pos, mask=in_rows, other=0.0)
    lse2 = tl.load(lse_ptr + (bh * 2 + 1) * seq_len + pos, mask=in_rows, other=0.0)
    base = stats_ptr + bh * 4 * seq_len + pos
    tl.store(base, lse1 * 1.4426950408889634, mask=in_rows)
    tl.store(base + seq_len, lse2 * 1.4426950408889634, mask=in_rows)
    tl.store(base + 2 * seq_len, d1, mask=in_rows)
    tl.store(base + 3 * seq_len, d2, mask=in_rows)


@triton.jit
def _dkdv_block(
    dk1, dk2, dv, k1, k2, v, q1_desc, q2_desc, do_desc, stats_base, b, h,
    cols, lo, hi, seq_len, qk_scale, lam,
    BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Query blocks [lo, hi) for one key block, transposed (keys as rows); ``MASKED``: causal.
    Query rows past the sequence read as zero (q, dO, D): they add nothing."""
    offs_m = tl.arange(0, BLOCK_M)
    for start in range(lo, hi, BLOCK_M):
        rows = start + offs_m
        q1 = _tile(q1_desc, b, h, start, BLOCK_M, BLOCK_DK)
        q2 = _tile(q2_desc, b, h, start, BLOCK_M, BLOCK_DK)
        do = _tile(do_desc, b, h, start, BLOCK_M, BLOCK_DV)
        in_rows = rows < seq_len
        lse1 = tl.load(stats_base + rows, mask=in_rows, other=0.0)
        lse2 = tl.load(stats_base + seq_len + rows, mask=in_rows, other=0.0)
        d1 = tl.load(stats_base + 2 * seq_len + rows, mask=in_rows, other=0.0)
        d2 = tl.load(stats_base + 3 * seq_len + rows, mask=in_rows, other=0.0)
        p1t = tl.math.exp2(tl.dot(k1, tl.trans(q1), input_precision=PRECISION) * qk_scale - lse1[None, :])
        p2t = tl.math.exp2(tl.dot(k2, tl.trans(q2), input_precision=PRECISION) * qk_scale - lse2[None, :])
        if MASKED:
            visible = cols[:, None] <= rows[None, :]
            p1t = tl.where(visible, p1t, 0.0)
            p2t = tl.where(visible, p2t, 0.0)
        dv = tl.dot((p1t - lam * p2t).to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds1t = p1t * (dpt - d1[None, :])
        ds2t = (-lam) * p2t * (dpt - d2[None, :])
        dk1 = tl.dot(ds1t.to(q1.dtype), q1, dk1, input_precision=PRECISION)
        dk2 = tl.dot(ds2t.to(q2.dtype), q2, dk2, input_precision=PRECISION)
    return dk1, dk2, dv


@triton.jit
def _differential_dkdv_kernel(
    q1_desc, q2_desc, k1_desc, k2_desc, v_desc, do_desc, lam_ptr, stats_ptr, dk1_ptr, dk2_ptr, dv_ptr,
    heads, seq_len, dim_qk, dim_v, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    bh = pid_bh.to(tl.int64)
    start_n = pid_n * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k1 = _tile(k1_desc, b, h, start_n, BLOCK_N, BLOCK_DK)
    k2 = _tile(k2_desc, b, h, start_n, BLOCK_N, BLOCK_DK)
    v = _tile(v_desc, b, h, start_n, BLOCK_N, BLOCK_DV)
    # stats (B, H, 4, L): lse1, lse2 (base 2), D1, D2.
    stats_base = stats_ptr + bh * 4 * seq_len
    lam = tl.load(lam_ptr).to(tl.float32)

    dk1 = tl.zeros((BLOCK_N, BLOCK_DK), dtype=tl.float32)
    dk2 = tl.zeros((BLOCK_N, BLOCK_DK), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    padded = tl.cdiv(seq_len, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # Queries of the diagonal band see part of this key block; later ones see all of it.
        diag_end = tl.minimum(start_n + BLOCK_N, padded)
        dk1, dk2, dv = _dkdv_block(
            dk1, dk2, dv, k1, k2, v, q1_desc, q2_desc, do_desc, stats_base, b, h,
            cols, start_n, diag_end, seq_len, qk_scale, lam,
            BLOCK_M, BLOCK_DK, BLOCK_DV, True, PRECISION,
        )
        lo = diag_end
    else:
        lo = 0
    dk1, dk2, dv = _dkdv_block(
        dk1, dk2, dv, k1, k2, v, q1_desc, q2_desc, do_desc, stats_base, b, h,
        cols, lo, padded, seq_len, qk_scale, lam,
        BLOCK_M, BLOCK_DK, BLOCK_DV, False, PRECISION,
    )
    # dk1, dk2 (B, H, L, Dk) and dv (B, H, L, Dv) are contiguous.
    in_cols = cols[:, None] < seq_len
    dk_off = (bh * seq_len + cols)[:, None] * dim_qk + offs_dk[None, :]
    dk_mask = in_cols & (offs_dk[None, :] < dim_qk)
    tl.store(dk1_ptr + dk_off, (dk1 * scale).to(dk1_ptr.dtype.element_ty), mask=dk_mask)
    tl.store(dk2_ptr + dk_off, (dk2 * scale).to(dk2_ptr.dtype.element_ty), mask=dk_mask)
    dv_off = (bh * seq_len + cols)[:, None] * dim_v + offs_dv[None, :]
    tl.store(dv_ptr + dv_off, dv.to(dv_ptr.dtype.element_ty), mask=in_cols & (offs_dv[None, :] < dim_v))


@triton.jit
def _dq_block(
    dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_desc, k2_desc, v_desc, b, h,
    rows, lo, hi, qk_scale, lam,
    BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Key blocks [lo, hi) for one query block; ``MASKED``: causal. Keys past the sequence read
    as zero (k, v): their dS multiplies a zero key row."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k1 = _tile(k1_desc, b, h, start, BLOCK_N, BLOCK_DK)
        k2 = _tile(k2_desc, b, h, start, BLOCK_N, BLOCK_DK)
        v = _tile(v_desc, b, h, start, BLOCK_N, BLOCK_DV)
        p1 = tl.math.exp2(tl.dot(q1, tl.trans(k1), input_precision=PRECISION) * qk_scale - lse1[:, None])
        p2 = tl.math.exp2(tl.dot(q2, tl.trans(k2), input_precision=PRECISION) * qk_scale - lse2[:, None])
        if MASKED:
            visible = (start + offs_n)[None, :] <= rows[:, None]
            p1 = tl.where(visible, p1, 0.0)
            p2 = tl.where(visible, p2, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds1 = p1 * (dp - d1[:, None])
        ds2 = (-lam) * p2 * (dp - d2[:, None])
        dq1 = tl.dot(ds1.to(k1.dtype), k1, dq1, input_precision=PRECISION)
        dq2 = tl.dot(ds2.to(k2.dtype), k2, dq2, input_precision=PRECISION)
    return dq1, dq2


@triton.jit
def _differential_dq_kernel(
    q1_desc, q2_desc, k1_desc, k2_desc, v_desc, do_desc, lam_ptr, stats_ptr, dq1_ptr, dq2_ptr,
    heads, seq_len, dim_qk, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    bh = pid_bh.to(tl.int64)
    start_m = pid_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    q1 = _tile(q1_desc, b, h, start_m, BLOCK_M, BLOCK_DK)
    q2 = _tile(q2_desc, b, h, start_m, BLOCK_M, BLOCK_DK)
    do = _tile(do_desc, b, h, start_m, BLOCK_M, BLOCK_DV)
    stats_base = stats_ptr + bh * 4 * seq_len
    in_rows = rows < seq_len
    lse1 = tl.load(stats_base + rows, mask=in_rows, other=0.0)
    lse2 = tl.load(stats_base + seq_len + rows, mask=in_rows, other=0.0)
    d1 = tl.load(stats_base + 2 * seq_len + rows, mask=in_rows, other=0.0)
    d2 = tl.load(stats_base + 3 * seq_len + rows, mask=in_rows, other=0.0)
    lam = tl.load(lam_ptr).to(tl.float32)

    dq1 = tl.zeros((BLOCK_M, BLOCK_DK), dtype=tl.float32)
    dq2 = tl.zeros((BLOCK_M, BLOCK_DK), dtype=tl.float32)
    padded = tl.cdiv(seq_len, BLOCK_N) * BLOCK_N
    if CAUSAL:
        full_end = start_m
        hi = tl.minimum(start_m + BLOCK_M, padded)
    else:
        full_end = padded
        hi = padded
    dq1, dq2 = _dq_block(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_desc, k2_desc, v_desc, b, h,
        rows, 0, full_end, qk_scale, lam,
        BLOCK_N, BLOCK_DK, BLOCK_DV, False, PRECISION,
    )
    dq1, dq2 = _dq_block(
        dq1, dq2, q1, q2, do, lse1, lse2, d1, d2, k1_desc, k2_desc, v_desc, b, h,
        rows, full_end, hi, qk_scale, lam,
        BLOCK_N, BLOCK_DK, BLOCK_DV, True, PRECISION,
    )
    dq_off = (bh * seq_len + rows)[:, None] * dim_qk + offs_dk[None, :]
    dq_mask = in_rows[:, None] & (offs_dk[None, :] < dim_qk)
    tl.store(dq1_ptr + dq_off, (dq1 * scale).to(dq1_ptr.dtype.element_ty), mask=dq_mask)
    tl.store(dq2_ptr + dq_off, (dq2 * scale).to(dq2_ptr.dtype.element_ty), mask=dq_mask)


# --------------------------------------------------------------------------------------------
# Launchers


def _block_d(dim: int) -> int:
    # tl.dot needs tiles of at least 16 along every axis.
    return max(16, triton.next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def tma_compatible(t: Tensor) -> bool:
    """TMA wants a 16-byte aligned base, unit last stride and 16-byte multiples for the others."""
    size = t.element_size()
    return (
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and all((stride * size) % 16 == 0 for stride in t.stride()[:-1])
    )


def _descriptor(t: Tensor, rows: int, block_d: int) -> TensorDescriptor:
    """A (B, H, L, D) descriptor loading (rows, block_d) tiles of one (batch, head)."""
    t = t if tma_compatible(t) else t.contiguous()
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, block_d])


def differential_forward(
    q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam: Tensor, *, causal: bool, scale: float,
    block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 3,
) -> tuple[Tensor, Tensor, Tensor]:
    """q1, q2, k1, k2 (B, H, L, Dk), v (B, H, L, Dv), lam a 0-dim tensor ->
    out, out2 (B, H, L, Dv) in q's dtype and lse fp32 (B, H, 2, L).

    Defaults from ``apps/bench/differential.py --sweep`` on an H200 (B=2, H=16, Dk=64, Dv=128,
    bf16, causal): 64 x 64 tiles, 4 warps, 3 stages (apps/bench/results/differential-h200.md).
    """
    batch, heads, seq_len, dim_qk = q1.shape
    dim_v = v.shape[-1]
    block_dk, block_dv = _block_d(dim_qk), _block_d(dim_v)
    out = torch.empty(batch, heads, seq_len, dim_v, device=q1.device, dtype=q1.dtype)
    out2 = torch.empty_like(out)
    lse = torch.empty(batch, heads, 2, seq_len, device=q1.device, dtype=torch.float32)
    grid = (triton.cdiv(seq_len, block_m), batch * heads)
    _differential_forward_kernel[grid](
        _descriptor(q1, block_m, block_dk), _descriptor(q2, block_m, block_dk),
        _descriptor(k1, block_n, block_dk), _descriptor(k2, block_n, block_dk), _descriptor(v, block_n, block_dv),
        lam, out, out2, lse, heads, seq_len, dim_v, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DK=block_dk, BLOCK_DV=block_dv,
        CAUSAL=causal, PRECISION=_precision(q1.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out, out2, lse


def differential_backward(
    grad_out: Tensor, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam: Tensor,
    out: Tensor, out2: Tensor, lse: Tensor, *, causal: bool, scale: float,
    block_m1: int = 32, block_n1: int = 64, block_m2: int = 128, block_n2: int = 64,
    warps1: int = 4, warps2: int = 8, num_stages: int = 3,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``differential_forward``: dq1, dq2, dk1, dk2, dv and dlam (lam's shape).

    ``block_m1 x block_n1`` (``warps1``): the (query, key) tiles of the dk/dv kernel;
    ``block_m2 x block_n2`` (``warps2``): of the dq kernel (block_n1 a multiple of block_m1, block_m2
    of block_n2, for the causal split). Defaults: tile sizes ptxas fits in registers without spills
    for Dk=64, Dv=128 on sm_90, the fastest of ``apps/bench/differential.py --sweep`` on an H200.
    """
    batch, heads, seq_len, dim_qk = q1.shape
    dim_v = v.shape[-1]
    block_dk, block_dv = _block_d(dim_qk), _block_d(dim_v)
    grad_out, out, out2 = grad_out.contiguous(), out.contiguous(), out2.contiguous()
    # stats (B, H, 4, L): lse1, lse2 in base-2 units, then D1, D2.
    stats = torch.empty(batch, heads, 4, seq_len, device=q1.device, dtype=torch.float32)
    rows_total = batch * heads * seq_len
    _differential_stats_kernel[(triton.cdiv(rows_total, 64),)](
        grad_out, out, out2, lse.contiguous(), lam, stats, rows_total, seq_len, dim_v,
        BLOCK=64, BLOCK_DV=block_dv,
    )
    grad_lam = (-stats[:, :, 3].sum()).reshape(lam.shape).to(lam.dtype)

    dq1 = torch.empty(batch, heads, seq_len, dim_qk, device=q1.device, dtype=q1.dtype)
    dq2, dk1, dk2 = torch.empty_like(dq1), torch.empty_like(dq1), torch.empty_like(dq1)
    dv = torch.empty(batch, heads, seq_len, dim_v, device=q1.device, dtype=v.dtype)
    meta = dict(
        BLOCK_DK=block_dk, BLOCK_DV=block_dv, CAUSAL=causal, PRECISION=_precision(q1.dtype), num_stages=num_stages,
    )
    _differential_dkdv_kernel[(triton.cdiv(seq_len, block_n1), batch * heads)](
        _descriptor(q1, block_m1, block_dk), _descriptor(q2, block_m1, block_dk),
        _descriptor(k1, block_n1, block_dk), _descriptor(k2, block_n1, block_dk), _descriptor(v, block_n1, block_dv),
        _descriptor(grad_out, block_m1, block_dv), lam, stats, dk1, dk2, dv,
        heads, seq_len, dim_qk, dim_v, scale * LOG2E, scale, BLOCK_M=block_m1, BLOCK_N=block_n1, num_warps=warps1, **meta,
    )
    _differential_dq_kernel[(triton.cdiv(seq_len, block_m2), batch * heads)](
        _descriptor(q1, block_m2, block_dk), _descriptor(q2, block_m2, block_dk),
        _descriptor(k1, block_n2, block_dk), _descriptor(k2, block_n2, block_dk), _descriptor(v, block_n2, block_dv),
        _descriptor(grad_out, block_m2, block_dv), lam, stats, dq1, dq2,
        heads, seq_len, dim_qk, scale * LOG2E, scale, BLOCK_M=block_m2, BLOCK_N=block_n2, num_warps=warps2, **meta,
    )
    return dq1, dq2, dk1, dk2, dv, grad_lam
