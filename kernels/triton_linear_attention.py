"""Triton kernel of chunked causal linear attention (the fast weight programmer's forward pass),
with an optional per-step decay.

One program owns a (BLOCK_K x BLOCK_V) tile of the fast-weight state S of one (batch, head) and
walks the sequence chunk by chunk, in order (causal) or backwards (``REVERSE``, the anti-causal
form the backward pass needs):

    o_c = (q_c k_c^T * W_c) v_c + diag(w_c) q_c S        S <- d_c S + (u_c * k_c)^T v_c

W_c is the causal mask (times exp(G_i - G_j) with decay); with decay, w_c, d_c and u_c carry the
state's decay to and from the chunk boundary, every exponent <= 0. Splitting the key dimension
into tiles is exact because the output is linear in each key tile; the tiles' partial outputs are
summed afterwards. Shapes: q, k (N, L, Dk), v (N, L, Dv), G (N, L) with N the flattened
batch x heads, all contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _chunked_linear_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    o_ptr,
    seq_len,
    dim_k,
    dim_v,
    stride_o_split,
    CHUNK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_n = tl.program_id(2).to(tl.int64)

    offs_c = tl.arange(0, CHUNK)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    in_k = offs_k < dim_k
    in_v = offs_v < dim_v

    q_base = q_ptr + pid_n * seq_len * dim_k
    k_base = k_ptr + pid_n * seq_len * dim_k
    v_base = v_ptr + pid_n * seq_len * dim_v
    g_base = g_ptr + pid_n * seq_len
    o_base = o_ptr + pid_k * stride_o_split + pid_n * seq_len * dim_v

    # Within a chunk, query i sees key j when j <= i (causal) or j >= i (reverse).
    if REVERSE:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
        visible = offs_c[:, None] <= offs_c[None, :]
    else:
        visible = offs_c[:, None] >= offs_c[None, :]

    state = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    # G at the state's anchor: the step just before the chunk (after it, in reverse).
    anchor = 0.0
    if HAS_DECAY:
        if REVERSE:  # noqa: SIM108
            anchor = tl.load(g_base + seq_len - 1)
        else:
            anchor = tl.load(g_base)
    num_chunks = tl.cdiv(seq_len, CHUNK)
    for step in range(0, num_chunks):
        if REVERSE:  # noqa: SIM108
            chunk = num_chunks - 1 - step
        else:
            chunk = step
        rows = chunk * CHUNK + offs_c
        in_rows = rows < seq_len
        qk_mask = in_rows[:, None] & in_k[None, :]
        v_mask = in_rows[:, None] & in_v[None, :]
        q = tl.load(q_base + rows[:, None] * dim_k + offs_k[None, :], mask=qk_mask, other=0.0)
        k = tl.load(k_base + rows[:, None] * dim_k + offs_k[None, :], mask=qk_mask, other=0.0)
        v = tl.load(v_base + rows[:, None] * dim_v + offs_v[None, :], mask=v_mask, other=0.0)

        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if HAS_DECAY:
            # Steps past the end repeat the last G (no decay; their keys are zero anyway).
            g = tl.load(g_base + tl.minimum(rows, seq_len - 1))
            if REVERSE:
                diff = g[None, :] - g[:, None]
                boundary = tl.load(g_base + chunk * CHUNK)  # the chunk's first step
            else:
                diff = g[:, None] - g[None, :]
                boundary = tl.load(g_base + tl.minimum(chunk * CHUNK + CHUNK, seq_len) - 1)  # its last
            scores = scores * tl.exp(tl.where(visible, diff, float("-inf")))
        else:
            scores = tl.where(visible, scores, 0.0)
        out = tl.dot(scores.to(v.dtype), v, input_precision=PRECISION)
        inter = tl.dot(q, state.to(q.dtype), input_precision=PRECISION)
        if HAS_DECAY:
            if REVERSE:
                out += inter * tl.exp(anchor - g)[:, None]
                k = (k * tl.exp(g - boundary)[:, None]).to(v.dtype)
                state = state * tl.exp(anchor - boundary)
            else:
                out += inter * tl.exp(g - anchor)[:, None]
                k = (k * tl.exp(boundary - g)[:, None]).to(v.dtype)
                state = state * tl.exp(boundary - anchor)
            anchor = boundary
        else:
            out += inter
        state += tl.dot(tl.trans(k), v, input_precision=PRECISION)

        o_ptrs = o_base + rows[:, None] * dim_v + offs_v[None, :]
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=v_mask)


def _block(dim: int, *, cap: int) -> int:
    # tl.dot needs tiles of at least 16 along every axis.
    return max(16, min(cap, triton.next_power_of_2(dim)))


def triton_causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cum_log_decay: Tensor | None = None,
    reverse: bool = False,
    chunk_size: int = 64,
    block_k: int = 128,
    block_v: int = 64,
    num_warps: int = 4,
) -> Tensor:
    """o_i = sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j (``reverse``: j >= i, exp(G_j - G_i)).

    q, k (..., L, Dk), v (..., L, Dv), cum_log_decay G (..., L) or None (no decay).
    Defaults measured on an H200 (apps/bench/kernels.py --sweep, D=128 bf16): one key tile of up
    to 128 (no partial-output reduction) and value tiles of 64 ran 2x faster than 64 x 64 tiles.
    """
    *lead, seq_len, dim_k = q.shape
    dim_v = v.shape[-1]
    q3 = q.reshape(-1, seq_len, dim_k).contiguous()
    k3 = k.reshape(-1, seq_len, dim_k).contiguous()
    v3 = v.reshape(-1, seq_len, dim_v).contiguous()
    n = q3.shape[0]
    has_decay = cum_log_decay is not None
    g = cum_log_decay.reshape(n, seq_len).float().contiguous() if has_decay else q3  # unused without decay
    block_k = _block(dim_k, cap=block_k)
    block_v = _block(dim_v, cap=block_v)
    splits_k = triton.cdiv(dim_k, block_k)
    # Several key tiles write fp32 partial outputs that are summed; one tile writes the output.
    if splits_k == 1:
        out = torch.empty(n, seq_len, dim_v, device=q.device, dtype=q.dtype)
    else:
        out = torch.empty(splits_k, n, seq_len, dim_v, device=q.device, dtype=torch.float32)
    grid = (splits_k, triton.cdiv(dim_v, block_v), n)
    _chunked_linear_attention_kernel[grid](
        q3,
        k3,
        v3,
        g,
        out,
        seq_len,
        dim_k,
        dim_v,
        n * seq_len * dim_v,
        CHUNK=chunk_size,
        BLOCK_K=block_k,
        BLOCK_V=block_v,
        REVERSE=reverse,
        HAS_DECAY=has_decay,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
    )
    if splits_k > 1:
        out = out.sum(0).to(q.dtype)
    return out.reshape(*lead, seq_len, dim_v)
