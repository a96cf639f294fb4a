"""Triton kernels of 2-D neighbourhood attention (NAT / NATTEN semantics), read straight from raster order.

Along an axis of n cells with kernel size k and dilation d, the cells of one dilation group
(index mod d == g) form a sub-grid of m = ceil((n - g) / d) cells, and a query only ever sees keys of
its own group: the window of k sub-grid cells centred on it, shifted inward at the borders
(``masks.Neighborhood``). So each program takes a 2-D tile of queries (TILE_H x TILE_W sub-grid
cells of one group pair), and walks the rectangle of keys their windows cover, in 2-D blocks of
BLOCK_H x BLOCK_W sub-grid cells, with an online softmax. No token is ever permuted: a tile's row is
a run of contiguous tokens (d = 1) addressed as ``(g_r + d_h * i) * n_w + g_c + d_w * j``, so the
kernels take q, k, v as the model made them ((B, H, L, D), any strides but a unit one on D).

Why 2-D tiles: for a 15 x 15 window an 8 x 8 query tile covers a 22 x 22 key rectangle (484 keys,
225 of them visible per query), where 64 consecutive raster tokens would cover 15 rows of 78 keys.

Forward: one program per (query tile, batch x head); it also writes the log-sum-exp (natural log).
Backward: ``dq`` per query tile over the same key blocks; ``dk, dv`` per key tile over the query
blocks whose windows reach it (k//2 cells on each side inside the grid, more near the borders, where
windows shift inward), summed over the query heads that share the key/value head (grouped-query attention).
Scores are scaled by ``scale * log2(e)`` so the softmax runs on exp2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = math.log2(math.e)


@triton.jit
def _start(i, m, kernel):
    """First sub-grid cell of the window of sub-grid cell i (axis of m cells)."""
    return tl.minimum(tl.maximum(i - kernel // 2, 0), tl.maximum(m - kernel, 0))


@triton.jit
def _reaching(first_key, last_key, m, kernel):
    """[first, last) sub-grid cells whose windows hold a key in [first_key, last_key] (axis of m)."""
    first = tl.where(first_key - kernel + 1 <= 0, 0, first_key - kernel + 1 + kernel // 2)
    last = tl.where(last_key >= m - kernel, m - 1, last_key + kernel // 2)
    return first, tl.minimum(last, m - 1) + 1


@triton.jit
def _tile(pid, tiles_r, tiles_c, d_w):
    """(group row, group col, tile row, tile col) of the flat program index ``pid``."""
    tile_c = pid % tiles_c
    rest = pid // tiles_c
    tile_r = rest % tiles_r
    rest = rest // tiles_r
    return rest // d_w, rest % d_w, tile_r, tile_c


@triton.jit
def _cells(tile_r, tile_c, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Sub-grid rows and columns of the TILE_H * TILE_W cells of a tile (row-major within it)."""
    offs = tl.arange(0, TILE_H * TILE_W)
    return tile_r * TILE_H + offs // TILE_W, tile_c * TILE_W + offs % TILE_W


@triton.jit
def _visible(qi, qj, s_r, s_c, ki, kj, k_valid, k_h, k_w):
    """(queries, keys) bool: key (ki, kj) lies in the window starting at (s_r, s_c) of each query."""
    rows = (ki[None, :] >= s_r[:, None]) & (ki[None, :] < s_r[:, None] + k_h)
    cols = (kj[None, :] >= s_c[:, None]) & (kj[None, :] < s_c[:, None] + k_w)
    return rows & cols & k_valid[None, :]


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
    heads, kv_group, dim, length, scale_log2,
    n_h, n_w, k_h, k_w, d_h, d_w, tiles_r, tiles_c,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_r, g_c, tile_r, tile_c = _tile(tl.program_id(0), tiles_r, tiles_c, d_w)
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    m_r = (n_h - g_r + d_h - 1) // d_h
    m_c = (n_w - g_c + d_w - 1) // d_w
    qi, qj = _cells(tile_r, tile_c, TILE_H, TILE_W)
    q_valid = (qi < m_r) & (qj < m_c)
    q_tok = (g_r + d_h * qi).to(tl.int64) * n_w + g_c + d_w * qj
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + q_tok[:, None] * sql + offs_d[None, :],
                mask=q_valid[:, None] & in_d[None, :], other=0.0)
    s_r = _start(qi, m_r, k_h)
    s_c = _start(qj, m_c, k_w)
    # The key rectangle of the tile: windows start monotonically along each axis.
    first_r = _start(tile_r * TILE_H, m_r, k_h)
    last_r = tl.minimum(_start(tl.minimum(tile_r * TILE_H + TILE_H - 1, m_r - 1), m_r, k_h) + k_h, m_r)
    first_c = _start(tile_c * TILE_W, m_c, k_w)
    last_c = tl.minimum(_start(tl.minimum(tile_c * TILE_W + TILE_W - 1, m_c - 1), m_c, k_w) + k_w, m_c)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    m_i = tl.full((TILE_H * TILE_W,), -1.0e30, dtype=tl.float32)  # finite: no inf - inf on empty blocks
    l_i = tl.zeros((TILE_H * TILE_W,), dtype=tl.float32)
    acc = tl.zeros((TILE_H * TILE_W, BLOCK_D), dtype=tl.float32)
    for r0 in range(first_r, last_r, BLOCK_H):
        for c0 in range(first_c, last_c, BLOCK_W):
            ki, kj = _cells(0, 0, BLOCK_H, BLOCK_W)
            ki, kj = ki + r0, kj + c0
            k_valid = (ki < last_r) & (kj < last_c)
            k_tok = (g_r + d_h * ki).to(tl.int64) * n_w + g_c + d_w * kj
            load_mask = k_valid[:, None] & in_d[None, :]
            k = tl.load(k_base + k_tok[:, None] * skl + offs_d[None, :], mask=load_mask, other=0.0)
            v = tl.load(v_base + k_tok[:, None] * svl + offs_d[None, :], mask=load_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            scores = tl.where(_visible(qi, qj, s_r, s_c, ki, kj, k_valid, k_h, k_w), scores, float("-inf"))
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
    n_h, n_w, k_h, k_w, d_h, d_w, tiles_r, tiles_c,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    g_r, g_c, tile_r, tile_c = _tile(tl.program_id(0), tiles_r, tiles_c, d_w)
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    hkv = h // kv_group
    m_r = (n_h - g_r + d_h - 1) // d_h
    m_c = (n_w - g_c + d_w - 1) // d_w
    qi, qj = _cells(tile_r, tile_c, TILE_H, TILE_W)
    q_valid = (qi < m_r) & (qj < m_c)
    q_tok = (g_r + d_h * qi).to(tl.int64) * n_w + g_c + d_w * qj
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    q_mask = q_valid[:, None] & in_d[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + q_tok[:, None] * sql + offs_d[None, :], mask=q_mask, other=0.0)
    row = bh.to(tl.int64) * length + q_tok  # do, lse, delta, dq are contiguous
    do = tl.load(do_ptr + row[:, None] * dim + offs_d[None, :], mask=q_mask, other=0.0)
    lse2 = tl.load(lse_ptr + row, mask=q_valid, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + row, mask=q_valid, other=0.0)
    s_r = _start(qi, m_r, k_h)
    s_c = _start(qj, m_c, k_w)
    first_r = _start(tile_r * TILE_H, m_r, k_h)
    last_r = tl.minimum(_start(tl.minimum(tile_r * TILE_H + TILE_H - 1, m_r - 1), m_r, k_h) + k_h, m_r)
    first_c = _start(tile_c * TILE_W, m_c, k_w)
    last_c = tl.minimum(_start(tl.minimum(tile_c * TILE_W + TILE_W - 1, m_c - 1), m_c, k_w) + k_w, m_c)

    k_base = k_ptr + b.to(tl.int64) * skb + hkv * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hkv * svh
    dq = tl.zeros((TILE_H * TILE_W, BLOCK_D), dtype=tl.float32)
    for r0 in range(first_r, last_r, BLOCK_H):
        for c0 in range(first_c, last_c, BLOCK_W):
            ki, kj = _cells(0, 0, BLOCK_H, BLOCK_W)
            ki, kj = ki + r0, kj + c0
            k_valid = (ki < last_r) & (kj < last_c)
            k_tok = (g_r + d_h * ki).to(tl.int64) * n_w + g_c + d_w * kj
            load_mask = k_valid[:, None] & in_d[None, :]
            k = tl.load(k_base + k_tok[:, None] * skl + offs_d[None, :], mask=load_mask, other=0.0)
            v = tl.load(v_base + k_tok[:, None] * svl + offs_d[None, :], mask=load_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            visible = _visible(qi, qj, s_r, s_c, ki, kj, k_valid, k_h, k_w)
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
    n_h, n_w, k_h, k_w, d_h, d_w, tiles_r, tiles_c,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # Here the program's tile is of KEYS (TILE_H x TILE_W) and the loop walks query blocks.
    g_r, g_c, tile_r, tile_c = _tile(tl.program_id(0), tiles_r, tiles_c, d_w)
    bkv = tl.program_id(1)
    kv_heads = heads // kv_group
    b, hkv = bkv // kv_heads, bkv % kv_heads
    m_r = (n_h - g_r + d_h - 1) // d_h
    m_c = (n_w - g_c + d_w - 1) // d_w
    ki, kj = _cells(tile_r, tile_c, TILE_H, TILE_W)
    k_valid = (ki < m_r) & (kj < m_c)
    k_tok = (g_r + d_h * ki).to(tl.int64) * n_w + g_c + d_w * kj
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < dim
    k_mask = k_valid[:, None] & in_d[None, :]
    k = tl.load(k_ptr + b.to(tl.int64) * skb + hkv * skh + k_tok[:, None] * skl + offs_d[None, :], mask=k_mask, other=0.0)
    v = tl.load(v_ptr + b.to(tl.int64) * svb + hkv * svh + k_tok[:, None] * svl + offs_d[None, :], mask=k_mask, other=0.0)
    # The queries whose windows reach this tile (windows start monotonically along each axis).
    first_r, last_r = _reaching(tile_r * TILE_H, tl.minimum(tile_r * TILE_H + TILE_H, m_r) - 1, m_r, k_h)
    first_c, last_c = _reaching(tile_c * TILE_W, tl.minimum(tile_c * TILE_W + TILE_W, m_c) - 1, m_c, k_w)

    dk = tl.zeros((TILE_H * TILE_W, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((TILE_H * TILE_W, BLOCK_D), dtype=tl.float32)
    for member in range(0, kv_group):  # the query heads that read this key/value head
        h = hkv * kv_group + member
        q_base = q_ptr + b.to(tl.int64) * sqb + h * sqh
        row_base = (b * heads + h).to(tl.int64) * length
        for r0 in range(first_r, last_r, BLOCK_H):
            for c0 in range(first_c, last_c, BLOCK_W):
                qi, qj = _cells(0, 0, BLOCK_H, BLOCK_W)
                qi, qj = qi + r0, qj + c0
                q_valid = (qi < last_r) & (qj < last_c)
                q_tok = (g_r + d_h * qi).to(tl.int64) * n_w + g_c + d_w * qj
                q_mask = q_valid[:, None] & in_d[None, :]
                q = tl.load(q_base + q_tok[:, None] * sql + offs_d[None, :], mask=q_mask, other=0.0)
                row = row_base + q_tok
                do = tl.load(do_ptr + row[:, None] * dim + offs_d[None, :], mask=q_mask, other=0.0)
                lse2 = tl.load(lse_ptr + row, mask=q_valid, other=0.0) * 1.4426950408889634
                delta = tl.load(delta_ptr + row, mask=q_valid, other=0.0)
                s_r = _start(qi, m_r, k_h)
                s_c = _start(qj, m_c, k_w)
                visible = _visible(qi, qj, s_r, s_c, ki, kj, k_valid, k_h, k_w) & q_valid[:, None]
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


def default_config(grid: tuple[int, int], dim: int) -> dict:
    """Tile and block shapes (sub-grid cells) and warps: 8 x 8 on a 2-D grid, runs of 64 on one row."""
    if grid[0] == 1:
        return dict(tile=(1, 64), block=(1, 64), num_warps=4, num_stages=2)
    return dict(tile=(8, 8), block=(8, 8), num_warps=4, num_stages=2)


def _unit_d(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch_args(q: Tensor, k: Tensor, v: Tensor, grid, kernel_size, dilation, scale, tile) -> tuple[tuple, tuple]:
    n_h, n_w = grid
    sub_r, sub_c = -(-n_h // dilation[0]), -(-n_w // dilation[1])  # the largest group's sub-grid
    tiles_r, tiles_c = -(-sub_r // tile[0]), -(-sub_c // tile[1])
    args = (
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        q.shape[1], q.shape[1] // k.shape[1], q.shape[3], q.shape[2], scale * LOG2E,
        n_h, n_w, *kernel_size, *dilation, tiles_r, tiles_c,
    )
    programs = (dilation[0] * dilation[1] * tiles_r * tiles_c,)
    return args, programs


def _meta(q: Tensor, config: dict) -> dict:
    return dict(
        TILE_H=config["tile"][0], TILE_W=config["tile"][1], BLOCK_H=config["block"][0], BLOCK_W=config["block"][1],
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[3])),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )


def neighborhood_forward(
    q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], kernel_size: tuple[int, int],
    dilation: tuple[int, int], scale: float, config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """-> out (B, H, L, D) contiguous, lse fp32 (B, H, L) (natural log)."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    config = config or default_config(grid, q.shape[3])
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    args, programs = _launch_args(q, k, v, grid, kernel_size, dilation, scale, config["tile"])
    _forward_kernel[(*programs, q.shape[0] * q.shape[1])](q, k, v, out, lse, *args, **_meta(q, config))
    return out, lse


def neighborhood_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, grid: tuple[int, int],
    kernel_size: tuple[int, int], dilation: tuple[int, int], scale: float, config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``neighborhood_forward``: dq (like q), dk, dv (like k, v), all contiguous."""
    q, k, v = _unit_d(q), _unit_d(k), _unit_d(v)
    config = config or default_config(grid, q.shape[3])
    grad_out, lse = grad_out.contiguous(), lse.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O), (B, H, L)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    args, programs = _launch_args(q, k, v, grid, kernel_size, dilation, scale, config["tile"])
    meta = _meta(q, config)
    _backward_dq_kernel[(*programs, q.shape[0] * q.shape[1])](q, k, v, grad_out, lse, delta, dq, *args, **meta)
    _backward_dkdv_kernel[(*programs, k.shape[0] * k.shape[1])](
        q, k, v, grad_out, lse, delta, dk, dv, *args, **meta
    )
    return dq, dk, dv
