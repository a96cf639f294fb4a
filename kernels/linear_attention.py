"""Causal linear attention (the fast weight programmer) as the torch custom op
``panformer::causal_linear_attention``, with an optional per-step decay.

    o_i = sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j        (reverse=True: sum over j >= i,
                                                             weight exp(G_j - G_i))

i.e. a fast-weight matrix S_i = g_i S_{i-1} + k_i v_i^T read as o_i = q_i S_i, where G is the
cumulative sum of the per-step log decays log g_t <= 0 (no decay: G = 0). Feature maps, scaling
and normalisation belong to the caller; this op is the part with a sequential dependency, which
FlexAttention cannot express without materialising the (L, L) scores.

Implementations: Triton on CUDA (``triton_linear_attention``), the chunked torch form elsewhere.
The backward pass is three calls of the same op plus one reduction for the decay:

    dq = op(do, v, k)      dk = op(v, do, q, reverse)      dv = op(k, q, do, reverse)
    dG = q . dq - k . dk   (the sign flips for the reverse op)

Shapes: q, k (..., L, Dk), v (..., L, Dv), G (..., L) with equal leading dims (e.g. B, H); output
(..., L, Dv).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def _decay_weights(query_g: Tensor, key_g: Tensor, visible: Tensor, *, reverse: bool) -> Tensor:
    """exp(G_query - G_key) (reverse: exp(G_key - G_query)) where visible, else 0; all <= 1."""
    diff = key_g - query_g if reverse else query_g - key_g
    return diff.masked_fill(~visible, float("-inf")).exp()


def naive_causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, cum_log_decay: Tensor | None = None, reverse: bool = False
) -> Tensor:
    """Reference: materialise the (L, L) scores, keep the causal (or anti-causal) triangle."""
    scores = q @ k.transpose(-1, -2)
    seq_len = q.shape[-2]
    ones = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device)
    visible = ones.triu() if reverse else ones.tril()
    if cum_log_decay is None:
        return scores.masked_fill(~visible, 0.0) @ v
    g = cum_log_decay.to(scores.dtype)
    return (scores * _decay_weights(g[..., :, None], g[..., None, :], visible, reverse=reverse)) @ v


def chunked_causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cum_log_decay: Tensor | None = None,
    reverse: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    """The chunked form in plain torch: exact within chunks, fast-weight states across chunks.

    The per-chunk states are summed in fp32 (or fp64); the matrix products run in the input dtype.
    """
    if reverse:
        # Anti-causal = causal on the flipped sequence; exp(G_j - G_i) becomes exp(G'_i - G'_j)
        # with G' = -flip(G), still non-increasing.
        flip = lambda t: t.flip(-2)  # noqa: E731
        g = None if cum_log_decay is None else -cum_log_decay.flip(-1)
        out = chunked_causal_linear_attention(flip(q), flip(k), flip(v), cum_log_decay=g, chunk_size=chunk_size)
        return flip(out)
    *lead, seq_len, dim_k = q.shape
    dim_v = v.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    pad = -seq_len % chunk_size
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    num_chunks = (seq_len + pad) // chunk_size
    # (..., N, C, D): N chunks of C steps.
    qc = q.reshape(*lead, num_chunks, chunk_size, dim_k)
    kc = k.reshape(*lead, num_chunks, chunk_size, dim_k)
    vc = v.reshape(*lead, num_chunks, chunk_size, dim_v)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    scores = qc @ kc.transpose(-1, -2)

    if cum_log_decay is None:
        intra = scores.masked_fill(~causal, 0.0) @ vc
        # The state each chunk reads is the sum of the states of the chunks before it.
        chunk_states = (kc.transpose(-1, -2) @ vc).to(acc)
        states = chunk_states.cumsum(-3) - chunk_states
        inter = qc @ states.to(q.dtype)
    else:
        g = cum_log_decay.to(acc)
        if pad:  # padded steps repeat the last G: no decay, and their keys are zero
            g = torch.cat((g, g[..., -1:].expand(*lead, pad)), dim=-1)
        gc = g.reshape(*lead, num_chunks, chunk_size)
        weights = _decay_weights(gc[..., :, None], gc[..., None, :], causal, reverse=False)
        intra = (scores * weights.to(scores.dtype)) @ vc
        # Chunk c's state, decayed to its last step; chunk c reads the states of chunks c' < c
        # decayed from their last steps to its anchor (the step before it).
        last = gc[..., -1]  # (..., N)
        chunk_states = ((kc * (last[..., None] - gc).exp()[..., None].to(k.dtype)).transpose(-1, -2) @ vc).to(acc)
        anchor = torch.cat((gc[..., :1, 0], last[..., :-1]), dim=-1)  # (..., N)
        earlier = torch.ones(num_chunks, num_chunks, dtype=torch.bool, device=q.device).tril(-1)
        across = _decay_weights(anchor[..., :, None], last[..., None, :], earlier, reverse=False)
        states = (across @ chunk_states.flatten(-2)).unflatten(-1, (dim_k, dim_v))
        inter = (qc @ states.to(q.dtype)) * (gc - anchor[..., None]).exp()[..., None].to(q.dtype)
    out = (intra + inter).reshape(*lead, num_chunks * chunk_size, dim_v)
    return out[..., :seq_len, :].contiguous()


def _check(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None) -> None:
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"causal_linear_attention wants q, k (..., L, Dk) and v (..., L, Dv); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if log_decay is not None and log_decay.shape != q.shape[:-1]:
        raise ValueError(f"log_decay must be (..., L) = {tuple(q.shape[:-1])}, got {tuple(log_decay.shape)}")


# torch.compile fuses the chunked form about 2x faster on CPU but costs ~10 s to compile once
# (dynamic shapes, so once per process): it pays only on large inputs. Built on first use, so that
# importing the package does not pull in the compiler (seconds of start-up for every CLI).
COMPILE_MIN_NUMEL = 1 << 21


@functools.cache
def compiled_chunked_causal_linear_attention():
    return torch.compile(chunked_causal_linear_attention, dynamic=True)


@torch.library.custom_op("panformer::causal_linear_attention", mutates_args=())
def _causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, cum_log_decay: Tensor | None, reverse: bool) -> Tensor:
    # Every device but CUDA: the chunked torch form, compiled on large inputs.
    chunked = chunked_causal_linear_attention
    if q.numel() + v.numel() >= COMPILE_MIN_NUMEL:
        chunked = compiled_chunked_causal_linear_attention()
    return chunked(q, k, v, cum_log_decay=cum_log_decay, reverse=reverse)


@_causal_linear_attention.register_kernel("cuda")
def _causal_linear_attention_cuda(
    q: Tensor, k: Tensor, v: Tensor, cum_log_decay: Tensor | None, reverse: bool
) -> Tensor:
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return chunked_causal_linear_attention(q, k, v, cum_log_decay=cum_log_decay, reverse=reverse)
    from panformer_kernels.triton_linear_attention import triton_causal_linear_attention

    return triton_causal_linear_attention(q, k, v, cum_log_decay=cum_log_decay, reverse=reverse)


@_causal_linear_attention.register_fake
def _causal_linear_attention_fake(
    q: Tensor, k: Tensor, v: Tensor, cum_log_decay: Tensor | None, reverse: bool
) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cum_log_decay, reverse = inputs
    ctx.save_for_backward(q, k, v, cum_log_decay)
    ctx.reverse = reverse


def _backward(ctx, grad_out: Tensor):
    q, k, v, g = ctx.saved_tensors
    op = torch.ops.panformer.causal_linear_attention
    grad_out = grad_out.contiguous()
    forward, backward = ctx.reverse, not ctx.reverse
    grad_q = op(grad_out, v, k, g, forward)
    grad_k = op(v, grad_out, q, g, backward)
    grad_v = op(k, q, grad_out, g, backward)
    grad_g = None
    if g is not None and ctx.needs_input_grad[3]:
        # G_i enters as query (+) and as key (-) of every weight exp(G_query - G_key).
        acc = torch.promote_types(q.dtype, g.dtype)
        grad_g = (q.to(acc) * grad_q.to(acc)).sum(-1) - (k.to(acc) * grad_k.to(acc)).sum(-1)
        grad_g = (-grad_g if ctx.reverse else grad_g).to(g.dtype)
    return grad_q, grad_k, grad_v, grad_g, None


_causal_linear_attention.register_autograd(_backward, setup_context=_setup_context)


def causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, log_decay: Tensor | None = None, reverse: bool = False
) -> Tensor:
    """o_i = sum_{j <= i} g_{j+1} ... g_i (q_i . k_j) v_j through the custom op (Triton on CUDA).

    q, k: (..., L, Dk); v: (..., L, Dv); log_decay: optional per-step log g_t <= 0, (..., L) (e.g.
    logsigmoid of a gate); returns (..., L, Dv) in the inputs' dtype. ``reverse`` sums over j >= i.
    """
    _check(q, k, v, log_decay)
    cum_log_decay = None
    if log_decay is not None:
        cum_log_decay = log_decay.to(torch.promote_types(log_decay.dtype, torch.float32)).cumsum(-1)
    return torch.ops.panformer.causal_linear_attention(q, k, v, cum_log_decay, reverse)
