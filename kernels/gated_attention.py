"""MossFormer's joint local + global attention as the torch custom op
``panformer::local_global_attention``.

Legend: N batch (e.g. B x H flattened), L length, Z query/key width, E value width, g chunk size.
Within each chunk of g tokens quadratic attention relu(q k^T / g)^2, plus linear attention:

    non-causal:  out_i = sum_{j in chunk(i)} relu(qq_i . qk_j / g)^2 v_j + lq_i (sum_j lk_j^T v_j) / L
    causal:      the same with j <= i within the chunk, and the linear sum over the earlier chunks / g

with keys where ``key_valid`` is False (and keys past L, in the padded last chunk) contributing
nothing. This is ``shared_attention.variants.gated.gated_local_global_attention`` without dropout
on the weights.

Implementations: on CUDA the Triton kernels of ``triton_gated_attention`` (a sequence reduction for
the (Z, E) global state, then one fused kernel per chunk that never writes the (g, g) weights;
backward recomputes them per chunk). Elsewhere the same math chunk by chunk in torch (fp32 or
wider). The op returns the output and the fp32 global state (non-causal (N, Z, E); causal
(C, N, Z, E), one per chunk), which the backward op reuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The Triton kernels hold a full query/key row (Z) per tile.
MAX_TRITON_DIM_Z = 256


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _chunked(t: Tensor, chunk: int) -> Tensor:
    """(N, L, D) -> (N, C, g, D), the last chunk zero-padded."""
    return F.pad(t, (0, 0, 0, -t.shape[1] % chunk)).unflatten(1, (-1, chunk))


def _key_weight(key_valid: Tensor | None, like: Tensor) -> Tensor | None:
    """key_valid bool (N, L) -> (N, L, 1) of 0/1 in ``like``'s dtype."""
    return None if key_valid is None else key_valid[..., None].to(like.dtype)


def _causal_pairs(chunk: int, device) -> Tensor:
    """bool (g, g): query i (row) sees key j (column) of its chunk when j <= i."""
    return torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()


def _torch_forward(qq, qk, lq, lk, v, key_valid, chunk_size: int, causal: bool) -> tuple[Tensor, Tensor]:
    compute = _compute_dtype(v.dtype)
    qq, qk, lq, lk, vf = (t.to(compute) for t in (qq, qk, lq, lk, v))
    length, g = v.shape[1], chunk_size
    keep = _key_weight(key_valid, vf)
    if keep is not None:
        lk = lk * keep
    weights = F.relu(_chunked(qq, g) @ _chunked(qk, g).transpose(-1, -2) / g) ** 2  # (N, C, g, g)
    if keep is not None:
        weights = weights * _chunked(keep, g).transpose(-1, -2)
    if causal:
        weights = weights * _causal_pairs(g, v.device)
    local = (weights @ _chunked(vf, g)).flatten(1, 2)[:, :length]
    if not causal:
        state = lk.transpose(1, 2) @ vf / length  # (N, Z, E)
        return (local + lq @ state).to(v.dtype), state
    # Causal: chunk c reads the states of the chunks before it, divided by g; kept as (C, N, Z, E).
    per_chunk = _chunked(lk, g).transpose(-1, -2) @ _chunked(vf, g) / g  # (N, C, Z, E)
    state = per_chunk.cumsum(1) - per_chunk
    glob = (_chunked(lq, g) @ state).flatten(1, 2)[:, :length]
    return (local + glob).to(v.dtype), state.transpose(0, 1).contiguous()


def _torch_backward(grad_out, qq, qk, lq, lk, v, key_valid, state, chunk_size: int, causal: bool):
    compute = _compute_dtype(v.dtype)
    dtypes = [t.dtype for t in (qq, qk, lq, lk, v)]
    do, qq, qk, lq, lk, vf = (t.to(compute) for t in (grad_out, qq, qk, lq, lk, v))
    state = state.to(compute)
    length, g = v.shape[1], chunk_size
    keep = _key_weight(key_valid, vf)
    masked_lk = lk if keep is None else lk * keep
    unchunk = lambda t: t.flatten(1, 2)[:, :length]  # noqa: E731
    qqc, qkc, vc, doc = (_chunked(t, g) for t in (qq, qk, vf, do))
    if causal:  # per chunk: T_c over the chunks before c; dT_c over the chunks after c
        state = state.transpose(0, 1)  # (N, C, Z, E)
        per_chunk = _chunked(lq, g).transpose(-1, -2) @ doc / g
        dstate = per_chunk.flip(1).cumsum(1).flip(1) - per_chunk
        dlq = unchunk(doc @ state.transpose(-1, -2))
        dlk = unchunk(vc @ dstate.transpose(-1, -2))
        dv = unchunk(_chunked(masked_lk, g) @ dstate)
    else:  # T = sum_j m_j lk_j^T v_j / L
        dstate = lq.transpose(1, 2) @ do / length
        dlq = do @ state.transpose(1, 2)
        dlk = vf @ dstate.transpose(1, 2)
        dv = masked_lk @ dstate
    dlk = dlk if keep is None else dlk * keep
    # Local term: P = relu(S / g)^2 * m per chunk.
    relu = F.relu(qqc @ qkc.transpose(-1, -2) / g)
    dp = doc @ vc.transpose(-1, -2)
    probs, dscores = relu**2, dp * 2 * relu / g
    if keep is not None:
        keep_c = _chunked(keep, g).transpose(-1, -2)
        probs, dscores = probs * keep_c, dscores * keep_c
    if causal:
        pairs = _causal_pairs(g, v.device)
        probs, dscores = probs * pairs, dscores * pairs
    dqq = unchunk(dscores @ qkc)
    dqk = unchunk(dscores.transpose(-1, -2) @ qqc)
    dv = dv + unchunk(probs.transpose(-1, -2) @ doc)
    grads = (dqq, dqk, dlq, dlk, dv)
    return tuple(grad.to(dtype) for grad, dtype in zip(grads, dtypes, strict=True))


def _use_triton(value: Tensor, quad_q: Tensor) -> bool:
    return value.dtype in (torch.float32, torch.bfloat16, torch.float16) and quad_q.shape[-1] <= MAX_TRITON_DIM_Z


@torch.library.custom_op("panformer::local_global_attention", mutates_args=())
def _local_global_attention(
    quad_q: Tensor, quad_k: Tensor, lin_q: Tensor, lin_k: Tensor, value: Tensor, key_valid: Tensor | None,
    chunk_size: int, causal: bool,
) -> tuple[Tensor, Tensor]:
    return _torch_forward(quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size, causal)


@_local_global_attention.register_kernel("cuda")
def _local_global_attention_cuda(quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size, causal):
    if not _use_triton(value, quad_q):
        return _torch_forward(quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size, causal)
    from panformer_kernels.triton_gated_attention import gated_forward

    return gated_forward(quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size=chunk_size, causal=causal)


@_local_global_attention.register_fake
def _local_global_attention_fake(quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size, causal):
    n, length, dim_z = quad_q.shape
    shape = (n, dim_z, value.shape[-1])
    if causal:
        shape = (-(-length // chunk_size), *shape)
    return torch.empty_like(value), value.new_empty(shape, dtype=_compute_dtype(value.dtype))


@torch.library.custom_op("panformer::local_global_attention_backward", mutates_args=())
def _local_global_attention_backward(
    grad_out: Tensor, quad_q: Tensor, quad_k: Tensor, lin_q: Tensor, lin_k: Tensor, value: Tensor,
    key_valid: Tensor | None, state: Tensor, chunk_size: int, causal: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _torch_backward(grad_out, quad_q, quad_k, lin_q, lin_k, value, key_valid, state, chunk_size, causal)


@_local_global_attention_backward.register_kernel("cuda")
def _local_global_attention_backward_cuda(
    grad_out, quad_q, quad_k, lin_q, lin_k, value, key_valid, state, chunk_size, causal
):
    if not _use_triton(value, quad_q):
        return _torch_backward(grad_out, quad_q, quad_k, lin_q, lin_k, value, key_valid, state, chunk_size, causal)
    from panformer_kernels.triton_gated_attention import gated_backward

    return gated_backward(
        grad_out, quad_q, quad_k, lin_q, lin_k, value, key_valid, state, chunk_size=chunk_size, causal=causal
    )


@_local_global_attention_backward.register_fake
def _local_global_attention_backward_fake(
    grad_out, quad_q, quad_k, lin_q, lin_k, value, key_valid, state, chunk_size, causal
):
    return tuple(torch.empty_like(t) for t in (quad_q, quad_k, lin_q, lin_k, value))


def _setup_context(ctx, inputs, output) -> None:
    quad_q, quad_k, lin_q, lin_k, value, key_valid, chunk_size, causal = inputs
    _, state = output
    ctx.save_for_backward(quad_q, quad_k, lin_q, lin_k, value, key_valid, state)
    ctx.options = (chunk_size, causal)


def _backward(ctx, grad_out: Tensor, grad_state: Tensor | None):
    quad_q, quad_k, lin_q, lin_k, value, key_valid, state = ctx.saved_tensors
    grads = torch.ops.panformer.local_global_attention_backward(
        grad_out.contiguous(), quad_q, quad_k, lin_q, lin_k, value, key_valid, state, *ctx.options
    )
    return (*grads, None, None, None)


_local_global_attention.register_autograd(_backward, setup_context=_setup_context)


def local_global_attention(
    quad_q: Tensor,
    quad_k: Tensor,
    lin_q: Tensor,
    lin_k: Tensor,
    value: Tensor,
    *,
    chunk_size: int,
    causal: bool = False,
    key_valid: Tensor | None = None,
) -> Tensor:
    """Joint local + global attention through the custom op (Triton on CUDA).

    quad_q, quad_k, lin_q, lin_k: (..., L, Z); value: (..., L, E); key_valid: bool (..., L), True =
    real token, or None. Returns (..., L, E) in value's dtype; differentiable in the five tensors.
    ``causal``: keys j <= i within the chunk, and the global term over the earlier chunks divided by
    g (MossFormer's causal form).
    """
    *lead, length, _ = quad_q.shape
    if any(t.shape != quad_q.shape for t in (quad_k, lin_q, lin_k)) or value.shape[:-1] != quad_q.shape[:-1]:
        raise ValueError(
            "local_global_attention wants quad_q, quad_k, lin_q, lin_k (..., L, Z) and value (..., L, E); got "
            + ", ".join(str(tuple(t.shape)) for t in (quad_q, quad_k, lin_q, lin_k, value))
        )
    if len({t.dtype for t in (quad_q, quad_k, lin_q, lin_k, value)}) != 1:
        raise TypeError("quad_q, quad_k, lin_q, lin_k and value must share a dtype")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    flat = [t.reshape(-1, length, t.shape[-1]).contiguous() for t in (quad_q, quad_k, lin_q, lin_k, value)]
    if key_valid is not None:
        key_valid = key_valid.to(torch.bool).expand(*lead, length).reshape(-1, length).contiguous()
    out, _ = torch.ops.panformer.local_global_attention(*flat, key_valid, int(chunk_size), bool(causal))
    return out.reshape(*lead, length, value.shape[-1])
