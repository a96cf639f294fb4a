"""Causal linear attention (the fast weight programmer) as the torch custom op
``panformer::causal_linear_attention``.

    o_i = sum_{j <= i} (q_i . k_j) v_j        (reverse=True: sum over j >= i)

i.e. a fast-weight matrix S_i = sum_{j <= i} k_j v_j^T written one outer product per step and read
as o_i = q_i S_i. Feature maps, scaling and normalisation belong to the caller; this op is the
part with a sequential dependency, which FlexAttention cannot express without materialising the
(L, L) scores.

Implementations: Triton on CUDA (``triton_linear_attention``), the chunked torch form elsewhere.
The backward pass is three calls of the same op:

    dq = op(do, v, k)                  dk = op(v, do, q, reverse)          dv = op(k, q, do, reverse)

Shapes: q, k (..., L, Dk), v (..., L, Dv) with equal leading dims (e.g. B, H); output (..., L, Dv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def naive_causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, *, reverse: bool = False) -> Tensor:
    """Reference: materialise the (L, L) scores, keep the causal (or anti-causal) triangle."""
    scores = q @ k.transpose(-1, -2)
    seq_len = q.shape[-2]
    ones = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device)
    visible = ones.triu() if reverse else ones.tril()
    return scores.masked_fill(~visible, 0.0) @ v


def chunked_causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, reverse: bool = False, chunk_size: int = 64
) -> Tensor:
    """The chunked form in plain torch: exact within chunks, fast-weight states across chunks.

    The per-chunk states are summed in fp32 (or fp64); the matrix products run in the input dtype.
    """
    if reverse:
        flip = lambda t: t.flip(-2)  # noqa: E731
        return flip(chunked_causal_linear_attention(flip(q), flip(k), flip(v), chunk_size=chunk_size))
    *lead, seq_len, dim_k = q.shape
    dim_v = v.shape[-1]
    pad = -seq_len % chunk_size
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    num_chunks = (seq_len + pad) // chunk_size
    # (..., N, C, D): N chunks of C steps.
    qc = q.reshape(*lead, num_chunks, chunk_size, dim_k)
    kc = k.reshape(*lead, num_chunks, chunk_size, dim_k)
    vc = v.reshape(*lead, num_chunks, chunk_size, dim_v)

    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    intra = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0) @ vc
    # The state each chunk reads is the sum of the states of the chunks before it.
    chunk_states = (kc.transpose(-1, -2) @ vc).to(torch.promote_types(q.dtype, torch.float32))
    states = chunk_states.cumsum(-3) - chunk_states
    inter = qc @ states.to(q.dtype)
    out = (intra + inter).reshape(*lead, num_chunks * chunk_size, dim_v)
    return out[..., :seq_len, :].contiguous()


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"causal_linear_attention wants q, k (..., L, Dk) and v (..., L, Dv); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")


# torch.compile fuses the chunked form about 2x faster on CPU but costs ~10 s to compile once
# (dynamic shapes, so once per process): it pays only on large inputs.
compiled_chunked_causal_linear_attention = torch.compile(chunked_causal_linear_attention, dynamic=True)
COMPILE_MIN_NUMEL = 1 << 21


@torch.library.custom_op("panformer::causal_linear_attention", mutates_args=())
def _causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, reverse: bool) -> Tensor:
    # Every device but CUDA: the chunked torch form, compiled on large inputs.
    if q.numel() + v.numel() >= COMPILE_MIN_NUMEL:
        return compiled_chunked_causal_linear_attention(q, k, v, reverse=reverse)
    return chunked_causal_linear_attention(q, k, v, reverse=reverse)


@_causal_linear_attention.register_kernel("cuda")
def _causal_linear_attention_cuda(q: Tensor, k: Tensor, v: Tensor, reverse: bool) -> Tensor:
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return chunked_causal_linear_attention(q, k, v, reverse=reverse)
    from panformer_kernels.triton_linear_attention import triton_causal_linear_attention

    return triton_causal_linear_attention(q, k, v, reverse=reverse)


@_causal_linear_attention.register_fake
def _causal_linear_attention_fake(q: Tensor, k: Tensor, v: Tensor, reverse: bool) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, reverse = inputs
    ctx.save_for_backward(q, k, v)
    ctx.reverse = reverse


def _backward(ctx, grad_out: Tensor):
    q, k, v = ctx.saved_tensors
    op = torch.ops.panformer.causal_linear_attention
    grad_out = grad_out.contiguous()
    forward, backward = ctx.reverse, not ctx.reverse
    grad_q = op(grad_out, v, k, forward)
    grad_k = op(v, grad_out, q, backward)
    grad_v = op(k, q, grad_out, backward)
    return grad_q, grad_k, grad_v, None


_causal_linear_attention.register_autograd(_backward, setup_context=_setup_context)


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, *, reverse: bool = False) -> Tensor:
    """o_i = sum_{j <= i} (q_i . k_j) v_j through the custom op (Triton on CUDA, torch elsewhere).

    q, k: (..., L, Dk); v: (..., L, Dv); returns (..., L, Dv) in the inputs' dtype.
    """
    _check(q, k, v)
    return torch.ops.panformer.causal_linear_attention(q, k, v, reverse)
