"""Triton kernels of MossFormer's joint local + global attention, forward and backward.

Legend: N batch (B x H flattened), L length, Z query/key width, E value width, g chunk size,
m key_valid (1.0 real token, 0.0 padding). Per chunk c of g tokens:

    out_c = P_c v_c + lq_c T_c      P_c = relu(qq_c qk_c^T / g)^2 * m

Non-causal, T_c = T = sum_j m_j lk_j^T v_j / L for every chunk; causal, P_c keeps keys j <= i and
T_c sums over the chunks before c, divided by g.

Forward: ``_state_kernel`` reduces lk^T v over splits of the sequence (fp32 partials, summed after;
causal: one split per chunk, then an exclusive prefix sum), then ``_forward_kernel`` computes one
(query block, E block) of a chunk: the scores S and weights P never leave registers, and the
global term lq T_c is added to the same accumulator.

Backward, with dO the output gradient and dT the same reduction of lq^T dO (causal: over the
chunks after c):

    dS = (dO v^T) * 2 relu(S) / g^2 * m     dqq = dS qk     dqk = dS^T qq
    dv = P^T dO + m lk dT                   dlq = dO T^T    dlk = m v dT^T

``_backward_dq_kernel`` owns a query block (dqq, dlq), ``_backward_dkdv_kernel`` a key block
(dqk, dlk, dv); both recompute S from qq and qk. Keys past L load as zero, so their scores and
weights are zero. Inputs are contiguous (N, L, Z) / (N, L, E); T and dT are fp32.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _state_kernel(
    a_ptr,
    b_ptr,
    valid_ptr,
    out_ptr,
    seq_len,
    rows_per_split,
    scale,
    DIM_A: tl.constexpr,
    DIM_B: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[split, n] = scale * sum over this split's rows j of m_j a_j^T b_j, a tile (DIM_A, BLOCK_B)."""
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_n = tl.program_id(2).to(tl.int64)
    num_n = tl.num_programs(2)
    offs_a = tl.arange(0, BLOCK_A)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    in_a = offs_a < DIM_A
    in_b = offs_b < DIM_B
    a_base = a_ptr + pid_n * seq_len * DIM_A
    b_base = b_ptr + pid_n * seq_len * DIM_B

    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    start = pid_s * rows_per_split
    stop = tl.minimum(start + rows_per_split, seq_len)
    for row0 in range(start, stop, BLOCK_L):
        rows = row0 + tl.arange(0, BLOCK_L)
        in_rows = rows < stop
        a = tl.load(a_base + rows[:, None] * DIM_A + offs_a[None, :], mask=in_rows[:, None] & in_a[None, :], other=0.0)
        b = tl.load(b_base + rows[:, None] * DIM_B + offs_b[None, :], mask=in_rows[:, None] & in_b[None, :], other=0.0)
        if HAS_VALID:  # applied after the loads, which then do not wait on it (software pipelining)
            keep = tl.load(valid_ptr + pid_n * seq_len + rows, mask=in_rows, other=0) != 0
            a = tl.where(keep[:, None], a, 0.0).to(b.dtype)
        acc += tl.dot(tl.trans(a), b, input_precision=PRECISION)
    out_base = out_ptr + (pid_s * num_n + pid_n) * DIM_A * DIM_B
    tl.store(out_base + offs_a[:, None] * DIM_B + offs_b[None, :], acc * scale, mask=in_a[:, None] & in_b[None, :])


@triton.jit
def _forward_kernel(
    qq_ptr,
    qk_ptr,
    lq_ptr,
    v_ptr,
    state_ptr,
    valid_ptr,
    out_ptr,
    seq_len,
    inv_g,
    state_stride_n,
    state_stride_c,
    CHUNK: tl.constexpr,
    DIM_Z: tl.constexpr,
    DIM_E: tl.constexpr,
    HAS_VALID: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Z: tl.constexpr,
    BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One (query block of a chunk, E block): sum over the chunk's keys of relu(S/g)^2 v, plus lq T."""
    m_blocks: tl.constexpr = (CHUNK + BLOCK_M - 1) // BLOCK_M
    pid_m = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_n = tl.program_id(2).to(tl.int64)
    chunk = pid_m // m_blocks
    chunk_start = chunk * CHUNK
    m_start = (pid_m % m_blocks) * BLOCK_M
    in_chunk_m = m_start + tl.arange(0, BLOCK_M)
    rows = chunk_start + in_chunk_m
    in_rows = (in_chunk_m < CHUNK) & (rows < seq_len)
    offs_z = tl.arange(0, BLOCK_Z)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    in_z = offs_z < DIM_Z
    in_e = offs_e < DIM_E
    zbase = pid_n * seq_len * DIM_Z
    ebase = pid_n * seq_len * DIM_E

    q_mask = in_rows[:, None] & in_z[None, :]
    qq = tl.load(qq_ptr + zbase + rows[:, None] * DIM_Z + offs_z[None, :], mask=q_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    n_stop = CHUNK
    if CAUSAL:  # keys up to the block's last query only
        n_stop = tl.minimum(m_start + BLOCK_M, CHUNK)
    for n0 in range(0, n_stop, BLOCK_N):
        in_chunk_n = n0 + tl.arange(0, BLOCK_N)
        cols = chunk_start + in_chunk_n
        in_cols = (in_chunk_n < CHUNK) & (cols < seq_len)
        qk = tl.load(qk_ptr + zbase + cols[:, None] * DIM_Z + offs_z[None, :], mask=in_cols[:, None] & in_z[None, :], other=0.0)
        v = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + offs_e[None, :], mask=in_cols[:, None] & in_e[None, :], other=0.0)
        # Keys past L load as zero: S = 0 there, so relu(S)^2 = 0 too.
        s = tl.maximum(tl.dot(qq, tl.trans(qk), input_precision=PRECISION), 0.0) * inv_g
        if HAS_VALID:  # after the loads, which then do not wait on it (software pipelining)
            keep = tl.load(valid_ptr + pid_n * seq_len + cols, mask=in_cols, other=0) != 0
            s = tl.where(keep[None, :], s, 0.0)
        if CAUSAL:
            s = tl.where(in_chunk_n[None, :] <= in_chunk_m[:, None], s, 0.0)
        acc += tl.dot((s * s).to(v.dtype), v, input_precision=PRECISION)

    # Global term: lq T, T (Z, E) in fp32, rounded to the inputs' dtype for the tensor cores.
    lq = tl.load(lq_ptr + zbase + rows[:, None] * DIM_Z + offs_z[None, :], mask=q_mask, other=0.0)
    t = tl.load(
        state_ptr + pid_n * state_stride_n + chunk * state_stride_c + offs_z[:, None] * DIM_E + offs_e[None, :],
        mask=in_z[:, None] & in_e[None, :],
        other=0.0,
    )
    acc += tl.dot(lq, t.to(lq.dtype), input_precision=PRECISION)
    tl.store(out_ptr + ebase + rows[:, None] * DIM_E + offs_e[None, :], acc.to(out_ptr.dtype.element_ty), mask=in_rows[:, None] & in_e[None, :])


@triton.jit
def _backward_dq_kernel(
    qq_ptr,
    qk_ptr,
    v_ptr,
    do_ptr,
    state_ptr,
    valid_ptr,
    dqq_ptr,
    dlq_ptr,
    seq_len,
    inv_g,
    state_stride_n,
    state_stride_c,
    CHUNK: tl.constexpr,
    DIM_Z: tl.constexpr,
    DIM_E: tl.constexpr,
    HAS_VALID: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Z: tl.constexpr,
    BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One query block of a chunk: dqq = dS qk over the chunk's keys, dlq = dO T^T."""
    m_blocks: tl.constexpr = (CHUNK + BLOCK_M - 1) // BLOCK_M
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1).to(tl.int64)
    chunk = pid_m // m_blocks
    chunk_start = chunk * CHUNK
    m_start = (pid_m % m_blocks) * BLOCK_M
    in_chunk_m = m_start + tl.arange(0, BLOCK_M)
    rows = chunk_start + in_chunk_m
    in_rows = (in_chunk_m < CHUNK) & (rows < seq_len)
    offs_z = tl.arange(0, BLOCK_Z)
    offs_e = tl.arange(0, BLOCK_E)
    in_z = offs_z < DIM_Z
    zbase = pid_n * seq_len * DIM_Z
    ebase = pid_n * seq_len * DIM_E
    q_mask = in_rows[:, None] & in_z[None, :]
    qq = tl.load(qq_ptr + zbase + rows[:, None] * DIM_Z + offs_z[None, :], mask=q_mask, other=0.0)
    if BLOCK_E >= DIM_E:  # one E block: load dO once
        do = tl.load(do_ptr + ebase + rows[:, None] * DIM_E + offs_e[None, :], mask=in_rows[:, None] & (offs_e < DIM_E)[None, :], other=0.0)

    dqq = tl.zeros((BLOCK_M, BLOCK_Z), dtype=tl.float32)
    n_stop = CHUNK
    if CAUSAL:
        n_stop = tl.minimum(m_start + BLOCK_M, CHUNK)
    for n0 in range(0, n_stop, BLOCK_N):
        in_chunk_n = n0 + tl.arange(0, BLOCK_N)
        cols = chunk_start + in_chunk_n
        in_cols = (in_chunk_n < CHUNK) & (cols < seq_len)
        qk = tl.load(qk_ptr + zbase + cols[:, None] * DIM_Z + offs_z[None, :], mask=in_cols[:, None] & in_z[None, :], other=0.0)
        s = tl.dot(qq, tl.trans(qk), input_precision=PRECISION)
        if BLOCK_E >= DIM_E:
            v = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + offs_e[None, :], mask=in_cols[:, None] & (offs_e < DIM_E)[None, :], other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        else:
            dp = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for e0 in range(0, DIM_E, BLOCK_E):
                in_e = (e0 + offs_e) < DIM_E
                do_e = tl.load(do_ptr + ebase + rows[:, None] * DIM_E + (e0 + offs_e)[None, :], mask=in_rows[:, None] & in_e[None, :], other=0.0)
                v_e = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + (e0 + offs_e)[None, :], mask=in_cols[:, None] & in_e[None, :], other=0.0)
                dp += tl.dot(do_e, tl.trans(v_e), input_precision=PRECISION)
        # d relu(S/g)^2 / dS = 2 relu(S) / g^2; keys past L have v = 0, so dP = 0 there.
        ds = dp * (2.0 * inv_g * inv_g) * tl.maximum(s, 0.0)
        if HAS_VALID:
            keep = tl.load(valid_ptr + pid_n * seq_len + cols, mask=in_cols, other=0) != 0
            ds = tl.where(keep[None, :], ds, 0.0)
        if CAUSAL:
            ds = tl.where(in_chunk_n[None, :] <= in_chunk_m[:, None], ds, 0.0)
        dqq += tl.dot(ds.to(qk.dtype), qk, input_precision=PRECISION)

    dlq = tl.zeros((BLOCK_M, BLOCK_Z), dtype=tl.float32)
    for e0 in range(0, DIM_E, BLOCK_E):
        in_e = (e0 + offs_e) < DIM_E
        if BLOCK_E >= DIM_E:
            do_e = do
        else:
            do_e = tl.load(do_ptr + ebase + rows[:, None] * DIM_E + (e0 + offs_e)[None, :], mask=in_rows[:, None] & in_e[None, :], other=0.0)
        t = tl.load(
            state_ptr + pid_n * state_stride_n + chunk * state_stride_c + offs_z[:, None] * DIM_E + (e0 + offs_e)[None, :],
            mask=in_z[:, None] & in_e[None, :],
            other=0.0,
        )
        dlq += tl.dot(do_e, tl.trans(t.to(do_e.dtype)), input_precision=PRECISION)
    out_offs = zbase + rows[:, None] * DIM_Z + offs_z[None, :]
    tl.store(dqq_ptr + out_offs, dqq.to(dqq_ptr.dtype.element_ty), mask=q_mask)
    tl.store(dlq_ptr + out_offs, dlq.to(dlq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _backward_dkdv_kernel(
    qq_ptr,
    qk_ptr,
    lk_ptr,
    v_ptr,
    do_ptr,
    dstate_ptr,
    valid_ptr,
    dqk_ptr,
    dlk_ptr,
    dv_ptr,
    seq_len,
    inv_g,
    state_stride_n,
    state_stride_c,
    CHUNK: tl.constexpr,
    DIM_Z: tl.constexpr,
    DIM_E: tl.constexpr,
    HAS_VALID: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_Z: tl.constexpr,
    BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One (key block of a chunk, E block of dv): dv = P^T dO + m lk dT; the E block 0 program also
    writes dqk = dS^T qq and dlk = m v dT^T (dS needs dO v^T over all of E)."""
    n_blocks: tl.constexpr = (CHUNK + BLOCK_N - 1) // BLOCK_N
    single_e: tl.constexpr = BLOCK_E >= DIM_E
    pid_k = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_n = tl.program_id(2).to(tl.int64)
    chunk = pid_k // n_blocks
    chunk_start = chunk * CHUNK
    n_start = (pid_k % n_blocks) * BLOCK_N
    in_chunk_n = n_start + tl.arange(0, BLOCK_N)
    cols = chunk_start + in_chunk_n
    in_range = (in_chunk_n < CHUNK) & (cols < seq_len)
    in_cols = in_range
    if HAS_VALID:
        in_cols = in_cols & (tl.load(valid_ptr + pid_n * seq_len + cols, mask=in_range, other=0) != 0)
    offs_z = tl.arange(0, BLOCK_Z)
    offs_e0 = tl.arange(0, BLOCK_E)
    offs_e = pid_e * BLOCK_E + offs_e0
    in_z = offs_z < DIM_Z
    in_e = offs_e < DIM_E
    zbase = pid_n * seq_len * DIM_Z
    ebase = pid_n * seq_len * DIM_E
    # Masked keys load as zero (qk, lk, v): their P, dS, and global terms, so their gradients, are
    # zero; the stores still cover them.
    k_mask = in_range[:, None] & in_z[None, :]
    v_mask = in_range[:, None] & in_e[None, :]
    k_load = in_cols[:, None] & in_z[None, :]
    qk = tl.load(qk_ptr + zbase + cols[:, None] * DIM_Z + offs_z[None, :], mask=k_load, other=0.0)
    v = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + offs_e[None, :], mask=in_cols[:, None] & in_e[None, :], other=0.0)
    with_dk = pid_e == 0

    dv = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
    dqk = tl.zeros((BLOCK_N, BLOCK_Z), dtype=tl.float32)
    m_first = 0
    if CAUSAL:  # queries from the block's first key on
        m_first = (n_start // BLOCK_M) * BLOCK_M
    for m0 in range(m_first, CHUNK, BLOCK_M):
        in_chunk_m = m0 + tl.arange(0, BLOCK_M)
        rows = chunk_start + in_chunk_m
        in_rows = (in_chunk_m < CHUNK) & (rows < seq_len)
        qq = tl.load(qq_ptr + zbase + rows[:, None] * DIM_Z + offs_z[None, :], mask=in_rows[:, None] & in_z[None, :], other=0.0)
        do = tl.load(do_ptr + ebase + rows[:, None] * DIM_E + offs_e[None, :], mask=in_rows[:, None] & in_e[None, :], other=0.0)
        r = tl.maximum(tl.dot(qk, tl.trans(qq), input_precision=PRECISION), 0.0) * inv_g  # relu(S^T) / g
        if CAUSAL:  # zero where the query comes before the key: P and dS both vanish there
            r = tl.where(in_chunk_m[None, :] >= in_chunk_n[:, None], r, 0.0)
        dv += tl.dot((r * r).to(do.dtype), do, input_precision=PRECISION)
        if single_e:
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dqk += tl.dot((dpt * (2.0 * inv_g) * r).to(qq.dtype), qq, input_precision=PRECISION)
        else:
            if with_dk:
                dpt = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                for e0 in range(0, DIM_E, BLOCK_E):
                    in_e2 = (e0 + offs_e0) < DIM_E
                    v_e = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + (e0 + offs_e0)[None, :], mask=in_cols[:, None] & in_e2[None, :], other=0.0)
                    do_e = tl.load(do_ptr + ebase + rows[:, None] * DIM_E + (e0 + offs_e0)[None, :], mask=in_rows[:, None] & in_e2[None, :], other=0.0)
                    dpt += tl.dot(v_e, tl.trans(do_e), input_precision=PRECISION)
                dqk += tl.dot((dpt * (2.0 * inv_g) * r).to(qq.dtype), qq, input_precision=PRECISION)

    dstate_base = dstate_ptr + pid_n * state_stride_n + chunk * state_stride_c
    lk = tl.load(lk_ptr + zbase + cols[:, None] * DIM_Z + offs_z[None, :], mask=k_load, other=0.0)
    dt = tl.load(dstate_base + offs_z[:, None] * DIM_E + offs_e[None, :], mask=in_z[:, None] & in_e[None, :], other=0.0)
    dv += tl.dot(lk, dt.to(lk.dtype), input_precision=PRECISION)
    tl.store(dv_ptr + ebase + cols[:, None] * DIM_E + offs_e[None, :], dv.to(dv_ptr.dtype.element_ty), mask=v_mask)

    out_offs = zbase + cols[:, None] * DIM_Z + offs_z[None, :]
    if single_e:
        dlk = tl.dot(v, tl.trans(dt.to(v.dtype)), input_precision=PRECISION)
        tl.store(dqk_ptr + out_offs, dqk.to(dqk_ptr.dtype.element_ty), mask=k_mask)
        tl.store(dlk_ptr + out_offs, dlk.to(dlk_ptr.dtype.element_ty), mask=k_mask)
    else:
        if with_dk:
            dlk = tl.zeros((BLOCK_N, BLOCK_Z), dtype=tl.float32)
            for e0 in range(0, DIM_E, BLOCK_E):
                in_e2 = (e0 + offs_e0) < DIM_E
                v_e = tl.load(v_ptr + ebase + cols[:, None] * DIM_E + (e0 + offs_e0)[None, :], mask=in_cols[:, None] & in_e2[None, :], other=0.0)
                dt_e = tl.load(dstate_base + offs_z[:, None] * DIM_E + (e0 + offs_e0)[None, :], mask=in_z[:, None] & in_e2[None, :], other=0.0)
                dlk += tl.dot(v_e, tl.trans(dt_e.to(v_e.dtype)), input_precision=PRECISION)
            tl.store(dqk_ptr + out_offs, dqk.to(dqk_ptr.dtype.element_ty), mask=k_mask)
            tl.store(dlk_ptr + out_offs, dlk.to(dlk_ptr.dtype.element_ty), mask=k_mask)


# --------------------------------------------------------------------------------------------
# Launchers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int, *, lo: int = 16) -> int:
    # tl.dot needs tiles of at least 16 along every axis.
    return max(lo, triton.next_power_of_2(n))


# Block configurations (BLOCK_M, BLOCK_N, BLOCK_E, warps, stages) tried by the autotuner on CUDA;
# blocks are clamped to the chunk and to E, duplicates dropped.
_FORWARD_CONFIGS = [
    (128, 64, 128, 8, 2),
    (64, 64, 128, 4, 3),
    (64, 64, 256, 8, 2),
    (128, 64, 64, 4, 3),
]
_DQ_CONFIGS = [
    (64, 64, 128, 4, 2),
    (64, 32, 128, 4, 3),
    (128, 32, 128, 8, 2),
    (64, 64, 64, 4, 2),
]
_DKDV_CONFIGS = [
    (32, 64, 128, 8, 2),
    (64, 64, 128, 4, 2),
    (32, 64, 128, 4, 3),
    (64, 64, 64, 4, 2),
]


def _configs(table, *, chunk: int, dim_e: int) -> list[triton.Config]:
    seen, out = set(), []
    for bm, bn, be, warps, stages in table:
        key = (min(bm, _pow2(chunk)), min(bn, _pow2(chunk)), min(be, _pow2(dim_e)), warps, stages)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config({"BLOCK_M": key[0], "BLOCK_N": key[1], "BLOCK_E": key[2]}, num_warps=warps, num_stages=stages))
    return out


_TUNED: dict[tuple[str, int, int], triton.runtime.Autotuner] = {}


def _tuned(kernel_name: str, chunk: int, dim_e: int) -> triton.runtime.Autotuner:
    """The kernel wrapped in triton.autotune over its table, keyed on the compile-time shapes."""
    key = (kernel_name, chunk, dim_e)
    if key not in _TUNED:
        kernel, table = {
            "forward": (_forward_kernel, _FORWARD_CONFIGS),
            "dq": (_backward_dq_kernel, _DQ_CONFIGS),
            "dkdv": (_backward_dkdv_kernel, _DKDV_CONFIGS),
        }[kernel_name]
        configs = _configs(table, chunk=chunk, dim_e=dim_e)
        _TUNED[key] = triton.autotune(configs, key=["CHUNK", "DIM_Z", "DIM_E", "HAS_VALID", "CAUSAL", "PRECISION"])(kernel)
    return _TUNED[key]


def _tuned_cache_items() -> list[tuple[tuple[str, int, int], triton.runtime.Autotuner]]:
    """The autotuned kernels built so far, for reports (each one's ``cache`` maps keys to configs)."""
    return list(_TUNED.items())


# The autotuner's choice per (kernel, constexprs, dtype), launched directly afterwards: the
# autotuner's own dispatch costs host time on every call, which short kernels cannot hide.
_BEST: dict[tuple, triton.Config] = {}


def _launch(kernel_name: str, grid, args, *, chunk: int, dim_e: int, blocks: dict | None) -> None:
    """Autotuned on CUDA; explicit (or small default) blocks in the interpreter or when given."""
    kernel = {"forward": _forward_kernel, "dq": _backward_dq_kernel, "dkdv": _backward_dkdv_kernel}[kernel_name]
    if blocks is None and not _interpreting():
        meta = args["meta"]
        key = (kernel_name, *meta.values(), args["pos"][0].dtype)
        config = _BEST.get(key)
        if config is None:
            tuner = _tuned(kernel_name, chunk, dim_e)
            tuner[grid](*args["pos"], **meta)
            _BEST[key] = tuner.best_config
        else:
            kernel[grid](*args["pos"], **meta, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
        return
    blocks = blocks or {"BLOCK_M": min(32, _pow2(chunk)), "BLOCK_N": min(32, _pow2(chunk)), "BLOCK_E": min(32, _pow2(dim_e))}
    meta = {**blocks}
    warps = meta.pop("num_warps", 4)
    stages = meta.pop("num_stages", 2)
    kernel[grid](*args["pos"], **args["meta"], **meta, num_warps=warps, num_stages=stages)


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def partial_states(a: Tensor, b: Tensor, valid: Tensor | None, *, scale: float, rows_per_split: int | None = None) -> Tensor:
    """scale * sum_j m_j a_j^T b_j over splits of the sequence: a (N, L, A), b (N, L, C), valid
    uint8 (N, L) or None -> fp32 (S, N, A, C). ``rows_per_split`` None: enough splits to fill the GPU."""
    n, seq_len, dim_a = a.shape
    dim_b = b.shape[-1]
    block_l = 64
    block_b = min(128, _pow2(dim_b))
    e_blocks = triton.cdiv(dim_b, block_b)
    if rows_per_split is None:
        # Enough programs to fill the GPU a few times over; the fp32 partial states are summed after.
        target = 4 * (_multiprocessors(a.device.index or 0) if a.is_cuda else 2)
        splits = max(1, min(triton.cdiv(seq_len, block_l), triton.cdiv(target, n * e_blocks)))
        rows_per_split = triton.cdiv(triton.cdiv(seq_len, splits), block_l) * block_l
    else:
        block_l = min(block_l, _pow2(rows_per_split))
    splits = triton.cdiv(seq_len, rows_per_split)
    partial = torch.empty(splits, n, dim_a, dim_b, device=a.device, dtype=torch.float32)
    _state_kernel[(splits, e_blocks, n)](
        a, b, valid if valid is not None else a, partial, seq_len, rows_per_split, scale,
        DIM_A=dim_a, DIM_B=dim_b, HAS_VALID=valid is not None, BLOCK_L=block_l, BLOCK_A=_pow2(dim_a),
        BLOCK_B=block_b, PRECISION=_precision(a.dtype), num_warps=8 if _pow2(dim_a) * block_b >= 128 * 128 else 4,
    )
    return partial


def _bytes(key_valid: Tensor | None) -> Tensor | None:
    # bool viewed as uint8 (no copy): the kernels test != 0.
    return None if key_valid is None else key_valid.contiguous().view(torch.uint8)


def _common(quad_q: Tensor, value: Tensor, key_valid: Tensor | None, chunk_size: int, causal: bool) -> dict:
    dim_z = quad_q.shape[-1]
    return dict(
        CHUNK=chunk_size, DIM_Z=dim_z, DIM_E=value.shape[-1], HAS_VALID=key_valid is not None, CAUSAL=causal,
        BLOCK_Z=_pow2(dim_z), PRECISION=_precision(value.dtype),
    )


def _state_strides(state: Tensor, causal: bool) -> tuple[int, int]:
    """(batch, chunk) strides of T: (N, Z, E) shared by every chunk, or (C, N, Z, E) causal."""
    return (state.stride(1), state.stride(0)) if causal else (state.stride(0), 0)


def gated_forward(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    value: Tensor,
    key_valid: Tensor | None,
    *,
    chunk_size: int,
    causal: bool = False,
    blocks: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """(out (N, L, E), T) from contiguous (N, L, Z) / (N, L, E) inputs; key_valid bool (N, L) or None.

    T is fp32: (N, Z, E) = sum_j m_j lk_j^T v_j / L, or causal (C, N, Z, E), chunk c's sum over the
    chunks before it, divided by g. ``blocks`` (BLOCK_M, BLOCK_N, BLOCK_E, optional num_warps /
    num_stages) overrides the autotuner.
    """
    n, seq_len, _ = quad_q.shape
    dim_e = value.shape[-1]
    valid = _bytes(key_valid)
    if causal:
        per_chunk = partial_states(lin_k, value, valid, scale=1.0 / chunk_size, rows_per_split=chunk_size)
        state = per_chunk.cumsum(0) - per_chunk
    else:
        state = partial_states(lin_k, value, valid, scale=1.0 / seq_len).sum(0)
    out = torch.empty_like(value)
    num_chunks = triton.cdiv(seq_len, chunk_size)

    def grid(meta):
        return (num_chunks * triton.cdiv(chunk_size, meta["BLOCK_M"]), triton.cdiv(dim_e, meta["BLOCK_E"]), n)

    args = {
        "pos": (quad_q, quad_k, lin_q, value, state, valid if valid is not None else quad_q, out, seq_len,
                1.0 / chunk_size, *_state_strides(state, causal)),
        "meta": _common(quad_q, value, key_valid, chunk_size, causal),
    }
    _launch("forward", grid, args, chunk=chunk_size, dim_e=dim_e, blocks=blocks)
    return out, state


def gated_backward(
    grad_out: Tensor,
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    value: Tensor,
    key_valid: Tensor | None,
    state: Tensor,
    *,
    chunk_size: int,
    causal: bool = False,
    dq_blocks: dict | None = None,
    dkdv_blocks: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dqq, dqk, dlq, dlk, dv) from the output gradient and the forward's state T."""
    n, seq_len, _ = quad_q.shape
    dim_e = value.shape[-1]
    grad_out = grad_out.contiguous()
    valid = _bytes(key_valid)
    valid_arg = valid if valid is not None else quad_q
    if causal:  # chunk c's keys feed the queries of the chunks after it
        per_chunk = partial_states(lin_q, grad_out, None, scale=1.0 / chunk_size, rows_per_split=chunk_size)
        dstate = per_chunk.flip(0).cumsum(0).flip(0) - per_chunk
    else:
        dstate = partial_states(lin_q, grad_out, None, scale=1.0 / seq_len).sum(0)
    dqq, dqk, dlq, dlk = (torch.empty_like(quad_q) for _ in range(4))
    dv = torch.empty_like(value)
    num_chunks = triton.cdiv(seq_len, chunk_size)
    meta = _common(quad_q, value, key_valid, chunk_size, causal)

    def grid_dq(m):
        return (num_chunks * triton.cdiv(chunk_size, m["BLOCK_M"]), n)

    def grid_dkdv(m):
        return (num_chunks * triton.cdiv(chunk_size, m["BLOCK_N"]), triton.cdiv(dim_e, m["BLOCK_E"]), n)

    inv_g = 1.0 / chunk_size
    dq_args = {
        "pos": (quad_q, quad_k, value, grad_out, state, valid_arg, dqq, dlq, seq_len, inv_g,
                *_state_strides(state, causal)),
        "meta": meta,
    }
    _launch("dq", grid_dq, dq_args, chunk=chunk_size, dim_e=dim_e, blocks=dq_blocks)
    dkdv_args = {
        "pos": (quad_q, quad_k, lin_k, value, grad_out, dstate, valid_arg, dqk, dlk, dv, seq_len, inv_g,
                *_state_strides(dstate, causal)),
        "meta": meta,
    }
    _launch("dkdv", grid_dkdv, dkdv_args, chunk=chunk_size, dim_e=dim_e, blocks=dkdv_blocks)
    return dqq, dqk, dlq, dlk, dv
