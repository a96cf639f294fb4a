"""Triton kernels of 2-D neighbourhood attention (NAT / NATTEN semantics) over a tiled token order.

Tokens of an (n_h, n_w) grid are stored tile by tile instead of row by row: tiles of
(TILE_H x TILE_W) grid cells, each tile's cells contiguous, tiles in raster order (the grid is
padded up to whole tiles; padded cells are never attended and their outputs are dropped). A query
tile's neighbourhoods then cover a small rectangle of key tiles, which the kernels walk one tile at
a time with an online softmax, masking each (query, key) pair exactly:

    key j is visible to query i  <=>  along each axis, j is in i's dilation group and within the
                                      kernel-size window of that group that is centred on i,
                                      shifted inward at the borders (``masks.Neighborhood``).

Forward: one program per (query tile, batch x head); it also writes the log-sum-exp for the backward.
Backward: ``dq`` per query tile over the same key tiles; ``dk, dv`` per key tile over the query tiles
whose windows can reach it (within (kernel - 1) * dilation cells), summed over the query heads that
share the key/value head (grouped-query attention). Shapes: q (B*H, Lt, D), k and v (B*Hkv, Lt, D),
Lt the padded, tiled token count, all contiguous.

Dilation is handled by the same per-pair arithmetic; with dilation d the visited key rectangle is
~d^2 times larger than the visible keys (a dilation-group-major order would avoid that: not done).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _window(i, n, kernel, dilation):
    """Along one axis: query cell i's dilation group and the first group index of its window."""
    group = i % dilation
    group_size = (n - group + dilation - 1) // dilation
    start = tl.maximum(i // dilation - kernel // 2, 0)
    start = tl.minimum(start, tl.maximum(group_size - kernel, 0))
    return group, start


@triton.jit
def _visible(q_row, q_col, k_row, k_col, n_h, n_w, k_h, k_w, d_h, d_w):
    """(TILE, TILE) bool: query cells (rows) see key cells (columns); padding sees nothing."""
    g_r, s_r = _window(q_row, n_h, k_h, d_h)
    g_c, s_c = _window(q_col, n_w, k_w, d_w)
    kg_r = k_row // d_h
    kg_c = k_col // d_w
    ok_r = ((k_row % d_h)[None, :] == g_r[:, None]) & (kg_r[None, :] >= s_r[:, None]) & (kg_r[None, :] < s_r[:, None] + k_h)
    ok_c = ((k_col % d_w)[None, :] == g_c[:, None]) & (kg_c[None, :] >= s_c[:, None]) & (kg_c[None, :] < s_c[:, None] + k_w)
    q_in = (q_row < n_h) & (q_col < n_w)
    k_in = (k_row < n_h) & (k_col < n_w)
    return ok_r & ok_c & q_in[:, None] & k_in[None, :]


@triton.jit
def _tile_cells(tile, tiles_w, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Grid rows and columns of the TILE_H * TILE_W cells of tile number ``tile``."""
    offs = tl.arange(0, TILE_H * TILE_W)
    return (tile // tiles_w) * TILE_H + offs // TILE_W, (tile % tiles_w) * TILE_W + offs % TILE_W


@triton.jit
def _neighborhood_forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    seq_len, dim, heads, kv_group, scale,
    n_h, n_w, tiles_w, k_h, k_w, d_h, d_w,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    TILE: tl.constexpr = TILE_H * TILE_W
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    bkv = (bh // heads) * (heads // kv_group) + (bh % heads) // kv_group
    offs = tl.arange(0, TILE)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q_row, q_col = _tile_cells(tile, tiles_w, TILE_H, TILE_W)
    rows = tile * TILE + offs
    q = tl.load(q_ptr + (bh * seq_len + rows)[:, None] * dim + offs_d[None, :], mask=in_d[None, :], other=0.0)

    # The rectangle of key cells any (real) query of this tile can see, in whole key tiles.
    q_in = (q_row < n_h) & (q_col < n_w)
    g_r, s_r = _window(q_row, n_h, k_h, d_h)
    g_c, s_c = _window(q_col, n_w, k_w, d_w)
    lo_r = tl.min(tl.where(q_in, g_r + d_h * s_r, n_h), axis=0)
    hi_r = tl.max(tl.where(q_in, g_r + d_h * (s_r + k_h - 1), 0), axis=0)
    lo_c = tl.min(tl.where(q_in, g_c + d_w * s_c, n_w), axis=0)
    hi_c = tl.max(tl.where(q_in, g_c + d_w * (s_c + k_w - 1), 0), axis=0)
    hi_r = tl.minimum(hi_r, n_h - 1)
    hi_c = tl.minimum(hi_c, n_w - 1)

    m_i = tl.full((TILE,), -1.0e30, dtype=tl.float32)  # finite: no inf - inf on fully masked tiles
    l_i = tl.zeros((TILE,), dtype=tl.float32)
    acc = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    for key_tile_r in range(lo_r // TILE_H, hi_r // TILE_H + 1):
        for key_tile_c in range(lo_c // TILE_W, hi_c // TILE_W + 1):
            key_tile = key_tile_r * tiles_w + key_tile_c
            k_row, k_col = _tile_cells(key_tile, tiles_w, TILE_H, TILE_W)
            cols = key_tile * TILE + offs
            kv_off = (bkv * seq_len + cols)[:, None] * dim + offs_d[None, :]
            k = tl.load(k_ptr + kv_off, mask=in_d[None, :], other=0.0)
            v = tl.load(v_ptr + kv_off, mask=in_d[None, :], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            visible = _visible(q_row, q_col, k_row, k_col, n_h, n_w, k_h, k_w, d_h, d_w)
            scores = tl.where(visible, scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(o_ptr + (bh * seq_len + rows)[:, None] * dim + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=in_d[None, :])
    tl.store(lse_ptr + bh * seq_len + rows, m_i + tl.log(l_safe))


@triton.jit
def _neighborhood_backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    seq_len, dim, heads, kv_group, scale,
    n_h, n_w, tiles_w, k_h, k_w, d_h, d_w,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    TILE: tl.constexpr = TILE_H * TILE_W
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    bkv = (bh // heads) * (heads // kv_group) + (bh % heads) // kv_group
    offs = tl.arange(0, TILE)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q_row, q_col = _tile_cells(tile, tiles_w, TILE_H, TILE_W)
    rows = tile * TILE + offs
    q_off = (bh * seq_len + rows)[:, None] * dim + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=in_d[None, :], other=0.0)
    do = tl.load(do_ptr + q_off, mask=in_d[None, :], other=0.0)
    lse = tl.load(lse_ptr + bh * seq_len + rows)
    delta = tl.load(delta_ptr + bh * seq_len + rows)

    q_in = (q_row < n_h) & (q_col < n_w)
    g_r, s_r = _window(q_row, n_h, k_h, d_h)
    g_c, s_c = _window(q_col, n_w, k_w, d_w)
    lo_r = tl.min(tl.where(q_in, g_r + d_h * s_r, n_h), axis=0)
    hi_r = tl.minimum(tl.max(tl.where(q_in, g_r + d_h * (s_r + k_h - 1), 0), axis=0), n_h - 1)
    lo_c = tl.min(tl.where(q_in, g_c + d_w * s_c, n_w), axis=0)
    hi_c = tl.minimum(tl.max(tl.where(q_in, g_c + d_w * (s_c + k_w - 1), 0), axis=0), n_w - 1)

    dq = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    for key_tile_r in range(lo_r // TILE_H, hi_r // TILE_H + 1):
        for key_tile_c in range(lo_c // TILE_W, hi_c // TILE_W + 1):
            key_tile = key_tile_r * tiles_w + key_tile_c
            k_row, k_col = _tile_cells(key_tile, tiles_w, TILE_H, TILE_W)
            cols = key_tile * TILE + offs
            kv_off = (bkv * seq_len + cols)[:, None] * dim + offs_d[None, :]
            k = tl.load(k_ptr + kv_off, mask=in_d[None, :], other=0.0)
            v = tl.load(v_ptr + kv_off, mask=in_d[None, :], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            visible = _visible(q_row, q_col, k_row, k_col, n_h, n_w, k_h, k_w, d_h, d_w)
            p = tl.where(visible, tl.exp(scores - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(dq_ptr + q_off, (dq * scale).to(dq_ptr.dtype.element_ty), mask=in_d[None, :])


@triton.jit
def _neighborhood_backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    seq_len, dim, heads, kv_group, scale,
    n_h, n_w, tiles_h, tiles_w, k_h, k_w, d_h, d_w,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    TILE: tl.constexpr = TILE_H * TILE_W
    key_tile = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    kv_heads = heads // kv_group
    offs = tl.arange(0, TILE)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    k_row, k_col = _tile_cells(key_tile, tiles_w, TILE_H, TILE_W)
    cols = key_tile * TILE + offs
    kv_off = (bkv * seq_len + cols)[:, None] * dim + offs_d[None, :]
    k = tl.load(k_ptr + kv_off, mask=in_d[None, :], other=0.0)
    v = tl.load(v_ptr + kv_off, mask=in_d[None, :], other=0.0)

    # A query sees keys at most (kernel - 1) * dilation cells away along each axis.
    tile_r, tile_c = key_tile // tiles_w, key_tile % tiles_w
    reach_r, reach_c = (k_h - 1) * d_h, (k_w - 1) * d_w
    first_r = tl.maximum(tile_r * TILE_H - reach_r, 0) // TILE_H
    last_r = tl.minimum((tile_r * TILE_H + TILE_H - 1 + reach_r) // TILE_H, tiles_h - 1)
    first_c = tl.maximum(tile_c * TILE_W - reach_c, 0) // TILE_W
    last_c = tl.minimum((tile_c * TILE_W + TILE_W - 1 + reach_c) // TILE_W, tiles_w - 1)

    dk = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((TILE, BLOCK_D), dtype=tl.float32)
    for member in range(0, kv_group):  # the query heads that read this key/value head
        bh = (bkv // kv_heads) * heads + (bkv % kv_heads) * kv_group + member
        for query_tile_r in range(first_r, last_r + 1):
            for query_tile_c in range(first_c, last_c + 1):
                query_tile = query_tile_r * tiles_w + query_tile_c
                q_row, q_col = _tile_cells(query_tile, tiles_w, TILE_H, TILE_W)
                rows = query_tile * TILE + offs
                q_off = (bh * seq_len + rows)[:, None] * dim + offs_d[None, :]
                q = tl.load(q_ptr + q_off, mask=in_d[None, :], other=0.0)
                do = tl.load(do_ptr + q_off, mask=in_d[None, :], other=0.0)
                lse = tl.load(lse_ptr + bh * seq_len + rows)
                delta = tl.load(delta_ptr + bh * seq_len + rows)
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                visible = _visible(q_row, q_col, k_row, k_col, n_h, n_w, k_h, k_w, d_h, d_w)
                p = tl.where(visible, tl.exp(scores - lse[:, None]), 0.0)  # (queries, keys)
                dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    tl.store(dk_ptr + kv_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=in_d[None, :])
    tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=in_d[None, :])


# --------------------------------------------------------------------------------------------
# Launchers (tensors already in tiled order)


def _common(q: Tensor, grid: tuple[int, int], tile: tuple[int, int]) -> dict:
    n_h, n_w = grid
    return dict(
        seq_len=q.shape[1], dim=q.shape[2], tiles_w=-(-n_w // tile[1]), n_h=n_h, n_w=n_w,
        block_d=max(16, triton.next_power_of_2(q.shape[2])),
        precision="ieee" if q.dtype == torch.float32 else "tf32",
    )


def neighborhood_forward(
    q: Tensor, k: Tensor, v: Tensor, *, heads: int, grid: tuple[int, int], kernel_size: tuple[int, int],
    dilation: tuple[int, int], scale: float, tile: tuple[int, int] = (8, 8), num_warps: int = 4,
) -> tuple[Tensor, Tensor]:
    """q (B*H, Lt, D), k and v (B*Hkv, Lt, D) in tiled order -> out (B*H, Lt, D), lse fp32 (B*H, Lt)."""
    c = _common(q, grid, tile)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    tiles = q.shape[1] // (tile[0] * tile[1])
    _neighborhood_forward_kernel[(tiles, q.shape[0])](
        q, k, v, out, lse, c["seq_len"], c["dim"], heads, q.shape[0] // k.shape[0], scale, c["n_h"], c["n_w"], c["tiles_w"], *kernel_size, *dilation,
        TILE_H=tile[0], TILE_W=tile[1], BLOCK_D=c["block_d"], PRECISION=c["precision"], num_warps=num_warps,
    )
    return out, lse


def neighborhood_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, heads: int,
    grid: tuple[int, int], kernel_size: tuple[int, int], dilation: tuple[int, int], scale: float,
    tile: tuple[int, int] = (8, 8), num_warps: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``neighborhood_forward`` (same layouts): dq, dk, dv."""
    c = _common(q, grid, tile)
    kv_group = q.shape[0] // k.shape[0]
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O) (B*H, Lt)
    grad_out = grad_out.contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    tiles = q.shape[1] // (tile[0] * tile[1])
    args = (c["seq_len"], c["dim"], heads, kv_group, scale, c["n_h"], c["n_w"])
    meta = dict(TILE_H=tile[0], TILE_W=tile[1], BLOCK_D=c["block_d"], PRECISION=c["precision"], num_warps=num_warps)
    _neighborhood_backward_dq_kernel[(tiles, q.shape[0])](
        q, k, v, grad_out, lse, delta, dq, *args, c["tiles_w"], *kernel_size, *dilation, **meta
    )
    _neighborhood_backward_dkdv_kernel[(tiles, k.shape[0])](
        q, k, v, grad_out, lse, delta, dk, dv, *args, tiles // c["tiles_w"], c["tiles_w"],
        *kernel_size, *dilation, **meta,
    )
    return dq, dk, dv
