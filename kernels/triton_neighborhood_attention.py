"""Triton kernels of 1-D, 2-D and 3-D neighbourhood attention (NAT / NATTEN semantics, with dilation
and causal axes), read straight from raster order. Grids are taken as 3 axes (depth, rows, columns);
1-D and 2-D grids have leading axes of size 1, and the depth logic compiles away when depth is 1.

Along an axis of n cells with kernel size k and dilation d, the cells of one dilation group
(index mod d == g) form a sub-grid of m = ceil((n - g) / d) cells, and a query only ever sees keys of
its own group: the window of k sub-grid cells centred on it, shifted inward at the borders
(``masks.Neighborhood``); along a causal axis the window is the k most recent cells, the query's
own included (fewer at the start). So each program takes a tile of queries (TILE_T x TILE_H x TILE_W
sub-grid cells of one dilation group), and walks the box of keys their windows cover, in blocks of
BLOCK_T x BLOCK_H x BLOCK_W sub-grid cells, with an online softmax. No token is ever permuted: a tile's row is
a run of contiguous tokens (d = 1) addressed as ``(g_r + d_h * i) * n_w + g_c + d_w * j``, so the
kernels take q, k, v as the model made them ((B, H, L, D), any strides but a unit one on D).
Causal flags and the depth axis are compile-time constants: each combination is its own kernel.

Why 2-D tiles: for a 15 x 15 window an 8 x 8 query tile covers a 22 x 22 key rectangle (484 keys,
225 of them visible per query), where 64 consecutive raster tokens would cover 15 rows of 78 keys.

Forward: one program per (query tile, batch x head); it also writes the log-sum-exp (natural log).
Backward: ``dq`` per query tile over the same key blocks; ``dk, dv`` per key tile over the query
blocks whose windows reach it (k//2 cells on each side inside the grid, more near the borders, where
windows shift inward; k - 1 cells ahead along a causal axis), summed over the query heads that share the key/value head (grouped-query attention).
Scores are scaled by ``scale * log2(e)`` so the softmax runs on exp2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from panformer_kernels.triton_backward_delta import backward_delta

LOG2E = math.log2(math.e)


@triton.jit
def _start(i, m, kernel, stride, CAUSAL: tl.constexpr):
    """First sub-grid cell of the window of sub-grid cell i (axis of m cells). With a stride, runs of
    ``stride`` cells share the window of their leader: the middle cell (the last one if causal)."""
    if CAUSAL:  # the k most recent cells, fewer at the start
        leader = tl.minimum((i // stride) * stride + stride - 1, m - 1)
        return tl.maximum(leader - kernel + 1, 0)
    leader = tl.minimum((i // stride) * stride + stride // 2, m - 1)
    return tl.minimum(tl.maximum(leader - kernel // 2, 0), tl.maximum(m - kernel, 0))


@triton.jit
def _end(i, m, kernel, stride, CAUSAL: tl.constexpr):
    """One past the last sub-grid cell of the window of cell i (keys past m are masked as invalid)."""
    if CAUSAL:  # never a key after the query itself
        return i + 1
    return _start(i, m, kernel, stride, False) + kernel


@triton.jit
def _key_range(tile, TILE: tl.constexpr, m, kernel, stride, CAUSAL: tl.constexpr):
    """[first, last) cells that any window of the queries of tile number ``tile`` (TILE cells along the
    axis) covers: windows move monotonically, so the first and last real query bound them. With a
    stride, a tile's runs share windows, so the box shrinks (the work GNA saves)."""
    first_query, last_query = tile * TILE, tl.minimum(tile * TILE + TILE, m) - 1
    return _start(first_query, m, kernel, stride, CAUSAL), tl.minimum(_end(last_query, m, kernel, stride, CAUSAL), m)


@triton.jit
def _query_range(tile, TILE: tl.constexpr, m, kernel, stride, CAUSAL: tl.constexpr):
    """[first, last) cells whose windows may hold a key of tile number ``tile`` (TILE cells along the
    axis). Window starts grow monotonically with the query and are constant over a run of ``stride``
    queries, so the queries whose start lies in [first_key - kernel + 1, last_key] are whole runs: exact
    for every stride (blocked windows read only their own block)."""
    first_key, last_key = tile * TILE, tl.minimum(tile * TILE + TILE, m) - 1
    if CAUSAL:  # a query sees keys at most kernel - 1 cells back, whatever the stride
        return first_key, tl.minimum(last_key + kernel - 1, m - 1) + 1
    lowest_start = first_key - kernel + 1  # a run whose leader sits at r*stride + stride//2 starts kernel//2 earlier
    first = tl.where(lowest_start <= 0, 0, (lowest_start + kernel // 2 - stride // 2 + stride - 1) // stride * stride)
    near_end = (last_key >= m - kernel) | (last_key + kernel // 2 >= m - 1)  # windows clamped at the far edge
    last = tl.where(near_end, m, tl.minimum(((last_key + kernel // 2 - stride // 2) // stride + 1) * stride, m))
    return first, last


@triton.jit
def _axis_in(i, j, m, kernel, stride, CAUSAL: tl.constexpr):
    """(queries, keys) bool along one axis: key cell j lies in query cell i's window."""
    start = _start(i, m, kernel, stride, CAUSAL)
    return (j[None, :] >= start[:, None]) & (j[None, :] < _end(i, m, kernel, stride, CAUSAL)[:, None])


@triton.jit
def _cells(t0, r0, c0, TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Sub-grid (depth, row, column) of the cells of a TILE_T x TILE_H x TILE_W tile (row-major within it)."""
    offs = tl.arange(0, TILE_T * TILE_H * TILE_W)
    return t0 + offs // (TILE_H * TILE_W), r0 + (offs // TILE_W) % TILE_H, c0 + offs % TILE_W


@triton.jit
def _tile_cells(tile_t, tile_r, tile_c, m_t, m_r, m_c, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w,
                TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """A program's own tile: its cells' sub-grid coordinates, which of them are real, and their raster indices."""
    t, r, c = _cells(tile_t * TILE_T, tile_r * TILE_H, tile_c * TILE_W, TILE_T, TILE_H, TILE_W)
    valid = (t < m_t) & (r < m_r) & (c < m_c)
    return t, r, c, valid, _token(t, r, c, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w)


@triton.jit
def _token(t, r, c, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w):
    """Raster index of sub-grid cells (t, r, c) of dilation group (g_t, g_r, g_c)."""
    return ((g_t + d_t * t).to(tl.int64) * n_h + g_r + d_h * r) * n_w + g_c + d_w * c


@triton.jit
def _program(n_t, n_h, n_w, d_t, d_h, d_w, tiles_t, tiles_r, tiles_c):
    """This program's dilation group, its sub-grid sizes and its tile index along each axis."""
    pid = tl.program_id(0)
    tile_c = pid % tiles_c
    pid = pid // tiles_c
    tile_r = pid % tiles_r
    pid = pid // tiles_r
    tile_t = pid % tiles_t
    pid = pid // tiles_t
    g_c = pid % d_w
    pid = pid // d_w
    g_r = pid % d_h
    g_t = pid // d_h
    m_t = (n_t - g_t + d_t - 1) // d_t
    m_r = (n_h - g_r + d_h - 1) // d_h
    m_c = (n_w - g_c + d_w - 1) // d_w
    return g_t, g_r, g_c, m_t, m_r, m_c, tile_t, tile_r, tile_c


@triton.jit
def _visible(qt, qr, qc, kt, kr, kc, k_valid, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
             CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr):
    """(queries, keys) bool: every axis holds the key in the query's window."""
    ok = _axis_in(qr, kr, m_r, k_h, s_h, CAUSAL_H) & _axis_in(qc, kc, m_c, k_w, s_w, CAUSAL_W) & k_valid[None, :]
    if THREE_D:
        ok = ok & _axis_in(qt, kt, m_t, k_t, s_t, CAUSAL_T)
    return ok


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_t, g_r, g_c, m_t, m_r, m_c, tile_t, tile_r, tile_c = _program(n_t, n_h, n_w, d_t, d_h, d_w, tiles_t, tiles_r, tiles_c)
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    qt, qr, qc, q_valid, q_tok = _tile_cells(tile_t, tile_r, tile_c, m_t, m_r, m_c, g_t, g_r, g_c, d_t, d_h, d_w,
                                             n_h, n_w, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + q_tok[:, None] * sql + offs_d[None, :],
                mask=q_valid[:, None] & in_d[None, :], other=0.0)
    # The box of keys the tile's windows cover.
    first_t, last_t = _key_range(tile_t, TILE_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _key_range(tile_r, TILE_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _key_range(tile_c, TILE_W, m_c, k_w, s_w, CAUSAL_W)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    TILE: tl.constexpr = TILE_T * TILE_H * TILE_W
    m_i = tl.full((TILE,), -1.0e30, dtype=tl.float32)  # finite: no inf - inf on empty blocks
    l_i = tl.zeros((TILE,), dtype=tl.float32)
    acc = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    for t0 in range(first_t, last_t, BLOCK_T):
        for r0 in range(first_r, last_r, BLOCK_H):
            for c0 in range(first_c, last_c, BLOCK_W):
                kt, kr, kc = _cells(t0, r0, c0, BLOCK_T, BLOCK_H, BLOCK_W)
                k_valid = (kt < last_t) & (kr < last_r) & (kc < last_c)
                k_tok = _token(kt, kr, kc, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w)
                load_mask = k_valid[:, None] & in_d[None, :]
                k = tl.load(k_base + k_tok[:, None] * skl + offs_d[None, :], mask=load_mask, other=0.0)
                v = tl.load(v_base + k_tok[:, None] * svl + offs_d[None, :], mask=load_mask, other=0.0)
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
                visible = _visible(qt, qr, qc, kt, kr, kc, k_valid, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                   CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
                scores = tl.where(visible, scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, axis=1))
                p = tl.exp2(scores - m_new[:, None])
                alpha = tl.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, axis=1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    row = bh.to(tl.int64) * length + q_tok  # o and lse are contiguous (B, H, L, D) and (B, H, L)
    tl.store(o_ptr + row[:, None] * dim + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=q_valid[:, None] & in_d[None, :])
    tl.store(lse_ptr + row, (m_i + tl.log2(l_safe)) / 1.4426950408889634, mask=q_valid)


@triton.jit
def _backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_t, g_r, g_c, m_t, m_r, m_c, tile_t, tile_r, tile_c = _program(n_t, n_h, n_w, d_t, d_h, d_w, tiles_t, tiles_r, tiles_c)
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    qt, qr, qc, q_valid, q_tok = _tile_cells(tile_t, tile_r, tile_c, m_t, m_r, m_c, g_t, g_r, g_c, d_t, d_h, d_w,
                                             n_h, n_w, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q_mask = q_valid[:, None] & in_d[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + q_tok[:, None] * sql + offs_d[None, :], mask=q_mask, other=0.0)
    row = bh.to(tl.int64) * length + q_tok  # do, lse, delta, dq are contiguous
    do = tl.load(do_ptr + row[:, None] * dim + offs_d[None, :], mask=q_mask, other=0.0)
    lse2 = tl.load(lse_ptr + row, mask=q_valid, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + row, mask=q_valid, other=0.0)
    first_t, last_t = _key_range(tile_t, TILE_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _key_range(tile_r, TILE_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _key_range(tile_c, TILE_W, m_c, k_w, s_w, CAUSAL_W)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    dq = tl.zeros((TILE_T * TILE_H * TILE_W, BLOCK_D), dtype=tl.float32)
    for t0 in range(first_t, last_t, BLOCK_T):
        for r0 in range(first_r, last_r, BLOCK_H):
            for c0 in range(first_c, last_c, BLOCK_W):
                kt, kr, kc = _cells(t0, r0, c0, BLOCK_T, BLOCK_H, BLOCK_W)
                k_valid = (kt < last_t) & (kr < last_r) & (kc < last_c)
                k_tok = _token(kt, kr, kc, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w)
                load_mask = k_valid[:, None] & in_d[None, :]
                k = tl.load(k_base + k_tok[:, None] * skl + offs_d[None, :], mask=load_mask, other=0.0)
                v = tl.load(v_base + k_tok[:, None] * svl + offs_d[None, :], mask=load_mask, other=0.0)
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
                visible = _visible(qt, qr, qc, kt, kr, kc, k_valid, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                   CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D)
                p = tl.where(visible, tl.exp2(scores - lse2[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    scale = scale_log2 / 1.4426950408889634
    tl.store(dq_ptr + row[:, None] * dim + offs_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_t, n_h, n_w, k_t, k_h, k_w, d_t, d_h, d_w, s_t, s_h, s_w, tiles_t, tiles_r, tiles_c,
    TILE_T: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    CAUSAL_T: tl.constexpr, CAUSAL_H: tl.constexpr, CAUSAL_W: tl.constexpr, THREE_D: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # Here the program's tile is of KEYS and the loop walks blocks of the queries that reach them.
    g_t, g_r, g_c, m_t, m_r, m_c, tile_t, tile_r, tile_c = _program(n_t, n_h, n_w, d_t, d_h, d_w, tiles_t, tiles_r, tiles_c)
    bkv = tl.program_id(1)
    kv_heads = heads // kv_group
    b, hkv = bkv // kv_heads, bkv % kv_heads
    kt, kr, kc, k_valid, k_tok = _tile_cells(tile_t, tile_r, tile_c, m_t, m_r, m_c, g_t, g_r, g_c, d_t, d_h, d_w,
                                             n_h, n_w, TILE_T, TILE_H, TILE_W)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    k_mask = k_valid[:, None] & in_d[None, :]
    k = tl.load(k_ptr + b.to(tl.int64) * skb + hkv * skh + k_tok[:, None] * skl + offs_d[None, :], mask=k_mask, other=0.0)
    v = tl.load(v_ptr + b.to(tl.int64) * svb + hkv * svh + k_tok[:, None] * svl + offs_d[None, :], mask=k_mask, other=0.0)
    first_t, last_t = _query_range(tile_t, TILE_T, m_t, k_t, s_t, CAUSAL_T)
    first_r, last_r = _query_range(tile_r, TILE_H, m_r, k_h, s_h, CAUSAL_H)
    first_c, last_c = _query_range(tile_c, TILE_W, m_c, k_w, s_w, CAUSAL_W)

    TILE: tl.constexpr = TILE_T * TILE_H * TILE_W
    dk = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    for member in range(0, kv_group):  # the query heads that read this key/value head
        h = hkv * kv_group + member
        q_base = q_ptr + b.to(tl.int64) * sqb + h * sqh
        row_base = (b * heads + h).to(tl.int64) * length
        for t0 in range(first_t, last_t, BLOCK_T):
            for r0 in range(first_r, last_r, BLOCK_H):
                for c0 in range(first_c, last_c, BLOCK_W):
                    qt, qr, qc = _cells(t0, r0, c0, BLOCK_T, BLOCK_H, BLOCK_W)
                    q_valid = (qt < last_t) & (qr < last_r) & (qc < last_c)
                    q_tok = _token(qt, qr, qc, g_t, g_r, g_c, d_t, d_h, d_w, n_h, n_w)
                    q_mask = q_valid[:, None] & in_d[None, :]
                    q = tl.load(q_base + q_tok[:, None] * sql + offs_d[None, :], mask=q_mask, other=0.0)
                    row = row_base + q_tok
                    do = tl.load(do_ptr + row[:, None] * dim + offs_d[None, :], mask=q_mask, other=0.0)
                    lse2 = tl.load(lse_ptr + row, mask=q_valid, other=0.0) * 1.4426950408889634
                    delta = tl.load(delta_ptr + row, mask=q_valid, other=0.0)
                    visible = _visible(qt, qr, qc, kt, kr, kc, k_valid, m_t, m_r, m_c, k_t, k_h, k_w, s_t, s_h, s_w,
                                       CAUSAL_T, CAUSAL_H, CAUSAL_W, THREE_D) & q_valid[:, None]
                    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (queries, keys)
                    p = tl.where(visible, tl.exp2(scores - lse2[:, None]), 0.0)
                    dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
                    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                    ds = p * (dp - delta[:, None])
                    dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    scale = scale_log2 / 1.4426950408889634
    out_row = bkv.to(tl.int64) * length + k_tok  # dk, dv are contiguous (B, Hkv, L, D)
    tl.store(dk_ptr + out_row[:, None] * dim + offs_d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=k_mask)
    tl.store(dv_ptr + out_row[:, None] * dim + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=k_mask)


# --------------------------------------------------------------------------------------------
# Launchers: q (B, H, L, D), k and v (B, Hkv, L, D), raster order, unit stride on D


def default_config(grid: tuple[int, int, int], dim: int) -> dict:
    """Tile and block shapes in sub-grid cells (depth, rows, columns), warps and pipeline stages.

    8 x 8 cells of one depth slice for 2-D and 3-D grids (a 3 x 7 x 7 window's box from a 4 x 4 x 4
    tile would be ~2x larger per visible key), runs of 64 on one row."""
    shape = (1, 8, 8) if grid[1] > 1 else (1, 1, 64)
    return dict(tile=shape, block=shape, num_warps=4, num_stages=2)


def _unit_d(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(kernel, q: Tensor, k: Tensor, v: Tensor, tensors: tuple, heads_axis: int, *, grid, kernel_size, dilation,
            causal, stride, scale: float, config: dict) -> None:
    tile = config["tile"]
    sub = [-(-n // d) for n, d in zip(grid, dilation, strict=True)]  # the largest group's sub-grid
    tiles = [-(-m // t) for m, t in zip(sub, tile, strict=True)]
    programs = (dilation[0] * dilation[1] * dilation[2] * tiles[0] * tiles[1] * tiles[2], heads_axis)
    kernel[programs](
        *tensors,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        q.shape[1], q.shape[1] // k.shape[1], q.shape[3], q.shape[2], scale * LOG2E,
        *grid, *kernel_size, *dilation, *stride, *tiles,
        TILE_T=tile[0], TILE_H=tile[1], TILE_W=tile[2],
        BLOCK_T=config["block"][0], BLOCK_H=config["block"][1], BLOCK_W=config["block"][2],
        CAUSAL_T=causal[0], CAUSAL_H=causal[1], CAUSAL_W=causal[2], THREE_D=grid[0] > 1,
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[3])),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )


def neighborhood_forward(
    q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int, int], kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int], causal: tuple[bool, bool, bool], scale: float, config: dict | None = None,
    stride: tuple[int, int, int] = (1, 1, 1),
) -> tuple[Tensor, Tensor]:
    """q (B, H, L, D), k and v (B, Hkv, L, D) over a 3-axis grid (1-D and 2-D grids with leading 1s)
    -> out (B, H, L, D) contiguous, lse fp32 (B, H, L) (natural log)."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    config = config or default_config(grid, q.shape[3])
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    _launch(_forward_kernel, q, k, v, (q, k, v, out, lse), q.shape[0] * q.shape[1], grid=grid,
            kernel_size=kernel_size, dilation=dilation, causal=causal, stride=stride, scale=scale, config=config)
    return out, lse


def neighborhood_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, grid: tuple[int, int, int],
    kernel_size: tuple[int, int, int], dilation: tuple[int, int, int], causal: tuple[bool, bool, bool],
    scale: float, config: dict | None = None, stride: tuple[int, int, int] = (1, 1, 1), grad_lse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``neighborhood_forward``: dq (like q), dk, dv (like k, v), all contiguous. ``grad_lse``
    (B, H, L), the gradient reaching the log-sum-exp, if any (merging attentions uses it)."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    config = config or default_config(grid, q.shape[3])
    grad_out, lse = grad_out.contiguous(), lse.contiguous()
    # rowsum(dO * O) - d lse, (B, H, L) fp32: d lse / d scores = p, the same form as the output's term, shifted
    delta = backward_delta(grad_out, out, grad_lse)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    options = dict(grid=grid, kernel_size=kernel_size, dilation=dilation, causal=causal, stride=stride, scale=scale,
                   config=config)
    _launch(_backward_dq_kernel, q, k, v, (q, k, v, grad_out, lse, delta, dq), q.shape[0] * q.shape[1], **options)
    _launch(_backward_dkdv_kernel, q, k, v, (q, k, v, grad_out, lse, delta, dk, dv), k.shape[0] * k.shape[1], **options)
    return dq, dk, dv
