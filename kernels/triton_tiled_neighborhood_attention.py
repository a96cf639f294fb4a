"""Triton kernels of 1-D, 2-D and 3-D neighbourhood attention on tokens in tile order (``TileLayout``):
the same semantics as ``triton_neighborhood_attention`` (NATTEN windows, dilation, causal axes,
stride, grouped-query heads), with the window box walked in dense, contiguous blocks.

In tile order a tile of the grid (TILE_T x TILE_H x TILE_W cells of one dilation group) is one run
of tokens, and so is any block that is a leading-axis slice of a tile (``is_block_of``). A program
owns one block (OWN_T x OWN_H x OWN_W cells) and walks the blocks (WALK_T x WALK_H x WALK_W cells)
of the box its windows cover: each block is a plain [BLOCK, D] load at one offset, and the per-pair
window mask is computed only for blocks that are not fully visible to every one of the program's
queries (for a 15 x 15 window and 8 x 8 blocks, the centre block needs none). Padding tokens of the
layout are invalid keys, and padding queries get a zero output and a zero log-sum-exp.

Forward: one program per (query block, batch x head), with an online softmax over the walked key
blocks; it writes the log-sum-exp (natural log). Backward: ``dq`` per query block over the same key
blocks; ``dk, dv`` per key block over the query blocks whose windows reach it, summed over the query
heads that share the key/value head. Scores are scaled by ``scale * log2(e)`` so the softmax runs on exp2.

Legend: B batch, H query heads, Hkv key/value heads, Lp tokens in tile order, D head dim.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from panformer_kernels.tile_layout import TileLayout
from panformer_kernels.triton_backward_delta import backward_delta
from panformer_kernels.triton_neighborhood_attention import (
    _cells,
    _end,
    _key_range,
    _program,
    _query_range,
    _start,
    _visible,
)

LOG2E = math.log2(math.e)


@triton.jit
def _block_start(t0, r0, c0, group, tiles_t, tiles_r, tiles_c,
                 TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Tile-order position (int64) of sub-grid cell (t0, r0, c0) of dilation group number ``group``."""
    tile = ((t0 // TILE_T) * tiles_r + r0 // TILE_H) * tiles_c + c0 // TILE_W
    within = ((t0 % TILE_T) * TILE_H + r0 % TILE_H) * TILE_W + c0 % TILE_W
    return (group.to(tl.int64) * tiles_t * tiles_r * tiles_c + tile) * (TILE_T * TILE_H * TILE_W) + within


@triton.jit
def _load_block(base, start, stride, ROWS: tl.constexpr, offs_d, dim, EVEN_D: tl.constexpr):
    """[ROWS, BLOCK_D] rows start.. of one head (always in bounds: the layout pads to whole tiles)."""
    ptrs = base + start * stride + tl.arange(0, ROWS)[:, None] * stride + offs_d[None, :]
    if EVEN_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=offs_d[None, :] < dim, other=0.0)


@triton.jit
def _axis_full(q0, Q: tl.constexpr, k0, K: tl.constexpr, m, kernel, stride, CAUSAL: tl.constexpr):
    """Along one axis: the Q query cells from q0 and the K key cells from k0 are all real, and every one
    of those queries sees every one of those keys. Windows move monotonically with the query, so their
    intersection is [start(last query), end(first query))."""
    q_last, k_last = q0 + Q - 1, k0 + K - 1
    inside = (k0 >= _start(q_last, m, kernel, stride, CAUSAL)) & (k_last < _end(q0, m, kernel, stride, CAUSAL))
    return inside & (q_last < m) & (k_last < m)


@triton.jit
def _pair_full(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
               Q_T: tl.constexpr, Q_H: tl.constexpr, Q_W: tl.constexpr,
               K_T: tl.constexpr, K_H: tl.constexpr, K_W: tl.constexpr,
               CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr):
    """A query block and a key block that need no per-pair mask (every axis fully visible)."""
    full = _axis_full(q0_r, Q_H, k0_r, K_H, m_r, k_h, s_h, CAUSAL_H) & \
        _axis_full(q0_c, Q_W, k0_c, K_W, m_c, k_w, s_w, CAUSAL_W)
    if THREE_D:
        full = full & _axis_full(q0_t, Q_T, k0_t, K_T, m_t, k_t, s_t, CAUSAL_T)
    return full


@triton.jit
def _pair_mask(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
               Q_T: tl.constexpr, Q_H: tl.constexpr, Q_W: tl.constexpr,
               K_T: tl.constexpr, K_H: tl.constexpr, K_W: tl.constexpr,
               CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr):
    """(queries, keys) bool: real query, real key, and the key in the query's window on every axis."""
    qt, qr, qc = _cells(q0_t, q0_r, q0_c, Q_T, Q_H, Q_W)
    kt, kr, kc = _cells(k0_t, k0_r, k0_c, K_T, K_H, K_W)
    q_valid = (qt < m_t) & (qr < m_r) & (qc < m_c)
    k_valid = (kt < m_t) & (kr < m_r) & (kc < m_c)
    visible = _visible(qt, qr, qc, kt, kr, kc, k_valid, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                       CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
    return visible & q_valid[:, None]


@triton.jit
def _walk_span(first, last, WALK: tl.constexpr):
    """The walked blocks (WALK cells each) that hold cells [first, last): the first one and how many."""
    start = first // WALK
    return start, tl.maximum((last + WALK - 1) // WALK - start, 0)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    OWN_T: tl.constexpr, OWN_H: tl.constexpr, OWN_W: tl.constexpr,
    WALK_T: tl.constexpr, WALK_H: tl.constexpr, WALK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_t, g_r, g_c, m_t, m_r, m_c, b_t, b_r, b_c = _program(
        n_t, n_h, n_w, d_t, d_h, d_w, tiles_t * (TILE_T // OWN_T), tiles_r * (TILE_H // OWN_H), tiles_c * (TILE_W // OWN_W))
    group = (g_t * d_h + g_r) * d_w + g_c
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    q0_t, q0_r, q0_c = b_t * OWN_T, b_r * OWN_H, b_c * OWN_W
    q_start = _block_start(q0_t, q0_r, q0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_block(q_ptr + b.to(tl.int64) * sqb + h * sqh, q_start, sql, OWN_T * OWN_H * OWN_W, offs_d, dim, EVEN_D)
    # The box of keys the block's windows cover, in walked blocks.
    first_t, last_t = _key_range(b_t, OWN_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _key_range(b_r, OWN_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _key_range(b_c, OWN_W, m_c, k_w, s_w, CAUSAL_W)
    w_t, n_wt = _walk_span(first_t, last_t, WALK_T)
    w_r, n_wr = _walk_span(first_r, last_r, WALK_H)
    w_c, n_wc = _walk_span(first_c, last_c, WALK_W)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    OWN: tl.constexpr = OWN_T * OWN_H * OWN_W
    WALK: tl.constexpr = WALK_T * WALK_H * WALK_W
    m_i = tl.full((OWN,), -1.0e30, dtype=tl.float32)  # finite: no inf - inf on fully masked blocks
    l_i = tl.zeros((OWN,), dtype=tl.float32)
    acc = tl.zeros((OWN, BLOCK_D), dtype=tl.float32)
    for i in range(0, n_wt * n_wr * n_wc):  # one flat loop: the compiler pipelines its loads
        k0_t = (w_t + i // (n_wr * n_wc)) * WALK_T
        k0_r = (w_r + (i // n_wc) % n_wr) * WALK_H
        k0_c = (w_c + i % n_wc) * WALK_W
        k_start = _block_start(k0_t, k0_r, k0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
        k = _load_block(k_base, k_start, skl, WALK, offs_d, dim, EVEN_D)
        v = _load_block(v_base, k_start, svl, WALK, offs_d, dim, EVEN_D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        if not _pair_full(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                          OWN_T, OWN_H, OWN_W, WALK_T, WALK_H, WALK_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D):
            visible = _pair_mask(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                 OWN_T, OWN_H, OWN_W, WALK_T, WALK_H, WALK_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    seen = l_i > 0  # padding queries see nothing: output 0, log-sum-exp 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    rows = bh.to(tl.int64) * length + q_start + tl.arange(0, OWN)  # o, lse contiguous (B, H, Lp, D), (B, H, Lp)
    out_ptrs = o_ptr + rows[:, None] * dim + offs_d[None, :]
    if EVEN_D:
        tl.store(out_ptrs, out.to(o_ptr.dtype.element_ty))
    else:
        tl.store(out_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_d[None, :] < dim)
    tl.store(lse_ptr + rows, tl.where(seen, (m_i + tl.log2(l_safe)) / 1.4426950408889634, 0.0))


@triton.jit
def _backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    OWN_T: tl.constexpr, OWN_H: tl.constexpr, OWN_W: tl.constexpr,
    WALK_T: tl.constexpr, WALK_H: tl.constexpr, WALK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_t, g_r, g_c, m_t, m_r, m_c, b_t, b_r, b_c = _program(
        n_t, n_h, n_w, d_t, d_h, d_w, tiles_t * (TILE_T // OWN_T), tiles_r * (TILE_H // OWN_H), tiles_c * (TILE_W // OWN_W))
    group = (g_t * d_h + g_r) * d_w + g_c
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    OWN: tl.constexpr = OWN_T * OWN_H * OWN_W
    WALK: tl.constexpr = WALK_T * WALK_H * WALK_W
    q0_t, q0_r, q0_c = b_t * OWN_T, b_r * OWN_H, b_c * OWN_W
    q_start = _block_start(q0_t, q0_r, q0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_block(q_ptr + b.to(tl.int64) * sqb + h * sqh, q_start, sql, OWN, offs_d, dim, EVEN_D)
    row_start = bh.to(tl.int64) * length + q_start  # do, lse, delta, dq are contiguous
    do = _load_block(do_ptr, row_start, dim, OWN, offs_d, dim, EVEN_D)
    rows = row_start + tl.arange(0, OWN)
    lse2 = tl.load(lse_ptr + rows) * 1.4426950408889634
    delta = tl.load(delta_ptr + rows)
    first_t, last_t = _key_range(b_t, OWN_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _key_range(b_r, OWN_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _key_range(b_c, OWN_W, m_c, k_w, s_w, CAUSAL_W)
    w_t, n_wt = _walk_span(first_t, last_t, WALK_T)
    w_r, n_wr = _walk_span(first_r, last_r, WALK_H)
    w_c, n_wc = _walk_span(first_c, last_c, WALK_W)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    dq = tl.zeros((OWN, BLOCK_D), dtype=tl.float32)
    for i in range(0, n_wt * n_wr * n_wc):
        k0_t = (w_t + i // (n_wr * n_wc)) * WALK_T
        k0_r = (w_r + (i // n_wc) % n_wr) * WALK_H
        k0_c = (w_c + i % n_wc) * WALK_W
        k_start = _block_start(k0_t, k0_r, k0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
        k = _load_block(k_base, k_start, skl, WALK, offs_d, dim, EVEN_D)
        v = _load_block(v_base, k_start, svl, WALK, offs_d, dim, EVEN_D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        p = tl.exp2(scores - lse2[:, None])
        if not _pair_full(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                          OWN_T, OWN_H, OWN_W, WALK_T, WALK_H, WALK_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D):
            visible = _pair_mask(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                 OWN_T, OWN_H, OWN_W, WALK_T, WALK_H, WALK_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    scale = scale_log2 / 1.4426950408889634
    dq_ptrs = dq_ptr + rows[:, None] * dim + offs_d[None, :]
    if EVEN_D:
        tl.store(dq_ptrs, (dq * scale).to(dq_ptr.dtype.element_ty))
    else:
        tl.store(dq_ptrs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=offs_d[None, :] < dim)


@triton.jit
def _backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    OWN_T: tl.constexpr, OWN_H: tl.constexpr, OWN_W: tl.constexpr,
    WALK_T: tl.constexpr, WALK_H: tl.constexpr, WALK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # Here the program's block is of KEYS and the loop walks blocks of the queries that reach them.
    g_t, g_r, g_c, m_t, m_r, m_c, b_t, b_r, b_c = _program(
        n_t, n_h, n_w, d_t, d_h, d_w, tiles_t * (TILE_T // OWN_T), tiles_r * (TILE_H // OWN_H), tiles_c * (TILE_W // OWN_W))
    group = (g_t * d_h + g_r) * d_w + g_c
    bkv = tl.program_id(1)
    kv_heads = heads // kv_group
    b, hkv = bkv // kv_heads, bkv % kv_heads
    OWN: tl.constexpr = OWN_T * OWN_H * OWN_W
    WALK: tl.constexpr = WALK_T * WALK_H * WALK_W
    k0_t, k0_r, k0_c = b_t * OWN_T, b_r * OWN_H, b_c * OWN_W
    k_start = _block_start(k0_t, k0_r, k0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_block(k_ptr + b.to(tl.int64) * skb + hkv * skh, k_start, skl, OWN, offs_d, dim, EVEN_D)
    v = _load_block(v_ptr + b.to(tl.int64) * svb + hkv * svh, k_start, svl, OWN, offs_d, dim, EVEN_D)
    first_t, last_t = _query_range(b_t, OWN_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _query_range(b_r, OWN_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _query_range(b_c, OWN_W, m_c, k_w, s_w, CAUSAL_W)
    w_t, n_wt = _walk_span(first_t, last_t, WALK_T)
    w_r, n_wr = _walk_span(first_r, last_r, WALK_H)
    w_c, n_wc = _walk_span(first_c, last_c, WALK_W)

    dk = tl.zeros((OWN, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((OWN, BLOCK_D), dtype=tl.float32)
    for member in range(0, kv_group):  # the query heads that read this key/value head
        h = hkv * kv_group + member
        q_base = q_ptr + b.to(tl.int64) * sqb + h * sqh
        row_base = (b * heads + h).to(tl.int64) * length
        for i in range(0, n_wt * n_wr * n_wc):
            q0_t = (w_t + i // (n_wr * n_wc)) * WALK_T
            q0_r = (w_r + (i // n_wc) % n_wr) * WALK_H
            q0_c = (w_c + i % n_wc) * WALK_W
            q_start = _block_start(q0_t, q0_r, q0_c, group, tiles_t, tiles_r, tiles_c, TILE_T, TILE_H, TILE_W)
            q = _load_block(q_base, q_start, sql, WALK, offs_d, dim, EVEN_D)
            do = _load_block(do_ptr, row_base + q_start, dim, WALK, offs_d, dim, EVEN_D)
            rows = row_base + q_start + tl.arange(0, WALK)
            lse2 = tl.load(lse_ptr + rows) * 1.4426950408889634
            delta = tl.load(delta_ptr + rows)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (queries, keys)
            p = tl.exp2(scores - lse2[:, None])
            if not _pair_full(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                              WALK_T, WALK_H, WALK_W, OWN_T, OWN_H, OWN_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D):
                visible = _pair_mask(q0_t, q0_r, q0_c, k0_t, k0_r, k0_c, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                     WALK_T, WALK_H, WALK_W, OWN_T, OWN_H, OWN_W, CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
                p = tl.where(visible, p, 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    scale = scale_log2 / 1.4426950408889634
    rows = bkv.to(tl.int64) * length + k_start + tl.arange(0, OWN)  # dk, dv are contiguous (B, Hkv, Lp, D)
    dk_ptrs = dk_ptr + rows[:, None] * dim + offs_d[None, :]
    dv_ptrs = dv_ptr + rows[:, None] * dim + offs_d[None, :]
    if EVEN_D:
        tl.store(dk_ptrs, (dk * scale).to(dk_ptr.dtype.element_ty))
        tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty))
    else:
        tl.store(dk_ptrs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=offs_d[None, :] < dim)
        tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=offs_d[None, :] < dim)


# --------------------------------------------------------------------------------------------
# Launchers: q (B, H, Lp, D), k and v (B, Hkv, Lp, D) in the tile order of ``layout``, unit stride on D


def is_block_of(block: tuple[int, int, int], tile: tuple[int, int, int]) -> bool:
    """A block shape is one contiguous run of a row-major tile: it divides the tile, and every axis before
    the last one it cuts short is 1 (e.g. (1, 4, 16) of (1, 8, 16), not (1, 8, 8))."""
    if any(t % b for b, t in zip(block, tile, strict=True)):
        return False
    cut = [axis for axis in range(3) if block[axis] < tile[axis]]
    return not cut or all(block[axis] == 1 for axis in range(max(cut)))


def chunk(tile: tuple[int, int, int], size: int) -> tuple[int, int, int]:
    """The leading-axis slice of ``tile`` of ``size`` cells (a contiguous run of it), or the tile if smaller."""
    block = list(tile)
    for axis in range(3):
        while math.prod(block) > size and block[axis] > 1:
            block[axis] //= 2
    return tuple(block)


def default_config(layout: TileLayout) -> dict:
    """Forward: the program owns a whole tile of queries and walks keys in runs of 64 in 2-D, of 32 in 3-D
    (a 3 x 7 x 7 window's box from 8 x 8 tiles is 30% smaller walked in 4 x 8 blocks) and in 1-D (measured
    twice on an H100, window 1023 on 16384: 0.883 ms against 0.926 with runs of 64; tiled-na-h100.md)."""
    tile = layout.tile3
    return dict(block=tile, walk=chunk(tile, 64 if len(layout.grid) == 2 else 32),
                num_warps=8 if math.prod(tile) >= 128 else 4, num_stages=2)


def default_backward_config(layout: TileLayout) -> dict:
    """Backward (dq and dk/dv alike): the program owns a whole tile and walks runs of 32, as FlashAttention-2's
    Triton backward (128 owned rows, 32 walked)."""
    return dict(block=layout.tile3, walk=chunk(layout.tile3, 32), num_warps=4, num_stages=2)


def _unit_d(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(kernel, q: Tensor, k: Tensor, v: Tensor, tensors: tuple, heads_axis: int, *, layout: TileLayout,
            kernel_size, causal, stride, scale: float, config: dict) -> None:
    tile, own, walk = layout.tile3, tuple(config["block"]), tuple(config["walk"])
    if not (is_block_of(own, tile) and is_block_of(walk, tile)):
        raise ValueError(f"blocks {own} and {walk} must be contiguous runs of the layout tile {tile}")
    if q.shape[2] != layout.length:
        raise ValueError(f"tiled neighbourhood attention wants Lp = {layout.length} tokens of {layout}, "
                         f"got q {tuple(q.shape)}")
    dilation = layout.dilation3
    tiles = layout.tiles3
    blocks = [m * t // b for m, t, b in zip(tiles, tile, own, strict=True)]
    programs = (math.prod(dilation) * math.prod(blocks), heads_axis)
    block_d = max(16, triton.next_power_of_2(q.shape[3]))
    kernel[programs](
        *tensors,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        q.shape[1], q.shape[1] // k.shape[1], q.shape[3], q.shape[2], scale * LOG2E,
        *layout.grid3, *kernel_size, *dilation, *stride, *tiles,
        TILE_T=tile[0], TILE_H=tile[1], TILE_W=tile[2], OWN_T=own[0], OWN_H=own[1], OWN_W=own[2],
        WALK_T=walk[0], WALK_H=walk[1], WALK_W=walk[2],
        CAUSAL_T=causal[0], CAUSAL_H=causal[1], CAUSAL_W=causal[2], THREE_D=layout.grid3[0] > 1,
        BLOCK_D=block_d, EVEN_D=block_d == q.shape[3],
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )


def tiled_neighborhood_forward(
    q: Tensor, k: Tensor, v: Tensor, *, layout: TileLayout, kernel_size: tuple[int, int, int],
    causal: tuple[bool, bool, bool], stride: tuple[int, int, int], scale: float, config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """q (B, H, Lp, D), k and v (B, Hkv, Lp, D) in ``layout``'s tile order; options as 3 axes
    -> out (B, H, Lp, D) contiguous, lse fp32 (B, H, Lp) (natural log), both in tile order."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    _launch(_forward_kernel, q, k, v, (q, k, v, out, lse), q.shape[0] * q.shape[1], layout=layout,
            kernel_size=kernel_size, causal=causal, stride=stride, scale=scale, config=config or default_config(layout))
    return out, lse


def tiled_neighborhood_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, layout: TileLayout,
    kernel_size: tuple[int, int, int], causal: tuple[bool, bool, bool], stride: tuple[int, int, int], scale: float,
    config: dict | None = None, grad_lse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``tiled_neighborhood_forward``: dq, dk, dv (contiguous, tile order). ``grad_lse``
    (B, H, Lp), the gradient reaching the log-sum-exp, if any. ``config`` serves the dq and the dk/dv kernel."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    grad_out, lse = grad_out.contiguous(), lse.contiguous()
    # rowsum(dO * O) - d lse, (B, H, Lp) fp32: d lse / d scores = p, the same form as the output's term, shifted
    delta = backward_delta(grad_out, out, grad_lse)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    options = dict(layout=layout, kernel_size=kernel_size, causal=causal, stride=stride, scale=scale,
                   config=config or default_backward_config(layout))
    _launch(_backward_dq_kernel, q, k, v, (q, k, v, grad_out, lse, delta, dq), q.shape[0] * q.shape[1], **options)
    _launch(_backward_dkdv_kernel, q, k, v, (q, k, v, grad_out, lse, delta, dk, dv), k.shape[0] * k.shape[1], **options)
    return dq, dk, dv
