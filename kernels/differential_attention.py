"""Differential attention as the torch custom op ``panformer::differential_attention``.

    out = softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v        (optionally causal)

the core of Differential Transformer attention (Ye et al. 2024) before its per-head RMSNorm, which
stays with the caller (``shared_attention.variants.differential``). ``lam`` is a 0-dim tensor and
is differentiated too (it is learned).

Implementations: on CUDA the fused Triton kernels of ``triton_differential_attention`` (one pass
over the keys for both maps, the V tile loaded once); elsewhere the reference math (materialised
softmaxes), forward and backward. The op returns the output, the second map's output ``out2`` and
the two log-sum-exps, which the backward op (``panformer::differential_attention_backward``) uses:

    dV = (P1 - lam P2)^T dO     dS1 = P1 (dO V^T - D1)     dS2 = -lam P2 (dO V^T - D2)
    dlam = -sum(dO * out2)      D_i = rowsum(dO * O_i),    O1 = out + lam out2

Legend: B batch, H heads, L tokens (queries and keys alike), Dk the width of each query/key half
(D / 2 of the model's head dim), Dv the value width.
"""

from __future__ import annotations

import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------
# Reference math (every device but CUDA, and the tests' oracle for the kernels)


def _probs(q: Tensor, k: Tensor, *, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """fp32 softmax probabilities (B, H, L, L) and log-sum-exps (B, H, L)."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    if causal:
        length = q.shape[-2]
        future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    lse = scores.logsumexp(-1)
    return (scores - lse[..., None]).exp(), lse


def _reference_forward(q1, q2, k1, k2, v, lam, causal, scale) -> tuple[Tensor, Tensor, Tensor]:
    p1, lse1 = _probs(q1, k1, causal=causal, scale=scale)
    p2, lse2 = _probs(q2, k2, causal=causal, scale=scale)
    out1, out2 = p1 @ v.float(), p2 @ v.float()
    out = out1 - lam.float() * out2
    return out.to(q1.dtype), out2.to(q1.dtype), torch.stack((lse1, lse2), dim=2)


def _reference_backward(grad_out, q1, q2, k1, k2, v, lam, out, out2, lse, causal, scale):
    do, vf, lam_f = grad_out.float(), v.float(), lam.float()
    p1, _ = _probs(q1, k1, causal=causal, scale=scale)
    p2, _ = _probs(q2, k2, causal=causal, scale=scale)
    o2 = out2.float()
    d2 = (do * o2).sum(-1, keepdim=True)
    d1 = (do * out.float()).sum(-1, keepdim=True) + lam_f * d2
    dp = do @ vf.transpose(-2, -1)  # shared by both maps
    ds1 = p1 * (dp - d1)
    ds2 = -lam_f * p2 * (dp - d2)
    dv = (p1 - lam_f * p2).transpose(-2, -1) @ do
    dq1, dq2 = (ds1 @ k1.float()) * scale, (ds2 @ k2.float()) * scale
    dk1, dk2 = (ds1.transpose(-2, -1) @ q1.float()) * scale, (ds2.transpose(-2, -1) @ q2.float()) * scale
    grad_lam = (-d2.sum()).reshape(lam.shape).to(lam.dtype)
    return dq1.to(q1.dtype), dq2.to(q2.dtype), dk1.to(k1.dtype), dk2.to(k2.dtype), dv.to(v.dtype), grad_lam


# --------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("panformer::differential_attention", mutates_args=())
def _differential_attention(
    q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam: Tensor, causal: bool, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _reference_forward(q1, q2, k1, k2, v, lam, causal, scale)


@_differential_attention.register_kernel("cuda")
def _differential_attention_cuda(q1, q2, k1, k2, v, lam, causal, scale):
    if q1.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return _reference_forward(q1, q2, k1, k2, v, lam, causal, scale)
    from panformer_kernels.triton_differential_attention import differential_forward

    return differential_forward(q1, q2, k1, k2, v, lam, causal=causal, scale=scale)


@_differential_attention.register_fake
def _differential_attention_fake(q1, q2, k1, k2, v, lam, causal, scale):
    out = q1.new_empty((*q1.shape[:-1], v.shape[-1]))
    lse = q1.new_empty((*q1.shape[:2], 2, q1.shape[2]), dtype=torch.float32)
    return out, torch.empty_like(out), lse


@torch.library.custom_op("panformer::differential_attention_backward", mutates_args=())
def _differential_attention_backward(
    grad_out: Tensor, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam: Tensor,
    out: Tensor, out2: Tensor, lse: Tensor, causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _reference_backward(grad_out, q1, q2, k1, k2, v, lam, out, out2, lse, causal, scale)


@_differential_attention_backward.register_kernel("cuda")
def _differential_attention_backward_cuda(grad_out, q1, q2, k1, k2, v, lam, out, out2, lse, causal, scale):
    if q1.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return _reference_backward(grad_out, q1, q2, k1, k2, v, lam, out, out2, lse, causal, scale)
    from panformer_kernels.triton_differential_attention import differential_backward

    return differential_backward(
        grad_out, q1, q2, k1, k2, v, lam, out.contiguous(), out2.contiguous(), lse, causal=causal, scale=scale
    )


@_differential_attention_backward.register_fake
def _differential_attention_backward_fake(grad_out, q1, q2, k1, k2, v, lam, out, out2, lse, causal, scale):
    return (
        torch.empty_like(q1), torch.empty_like(q2), torch.empty_like(k1), torch.empty_like(k2),
        torch.empty_like(v), torch.empty_like(lam),
    )


def _setup_context(ctx, inputs, output) -> None:
    q1, q2, k1, k2, v, lam, causal, scale = inputs
    out, out2, lse = output
    ctx.save_for_backward(q1, q2, k1, k2, v, lam, out, out2, lse)
    ctx.options = (causal, scale)


def _backward(ctx, grad_out: Tensor, grad_out2: Tensor | None, grad_lse: Tensor | None):
    # out2 and lse are auxiliary outputs: only ``out`` is differentiated.
    q1, q2, k1, k2, v, lam, out, out2, lse = ctx.saved_tensors
    grads = torch.ops.panformer.differential_attention_backward(
        grad_out.contiguous(), q1, q2, k1, k2, v, lam, out, out2, lse, *ctx.options
    )
    return (*grads, None, None)


_differential_attention.register_autograd(_backward, setup_context=_setup_context)


def fused_kernel_supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the CUDA kernels take whole heads q, k (B, H, L, D) and v (B, H, L, Dv) split in
    halves: same heads and length for all three (no grouped-query heads, no KV cache), halves and
    values of at most 128 wide with 16-byte rows (TMA), a floating dtype. Elsewhere the op still
    runs, on the reference math (materialised (L, L) scores)."""
    dk = q.shape[-1] // 2
    return (
        q.is_cuda
        and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and q.dtype == k.dtype == v.dtype
        and q.dim() == 4
        and q.shape == k.shape
        and v.shape[:3] == q.shape[:3]
        and q.shape[-1] % 2 == 0
        and dk <= 128
        and v.shape[-1] <= 128
        and (dk * q.element_size()) % 16 == 0
        and (v.shape[-1] * v.element_size()) % 16 == 0
    )


def differential_attention(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    v: Tensor,
    lam: Tensor | float,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q1 k1^T s) v - lam softmax(q2 k2^T s) v -> (B, H, L, Dv) in q1's dtype.

    q1, q2, k1, k2: (B, H, L, Dk), e.g. ``q.chunk(2, -1)`` (views are fine: only the last dim must
    be contiguous); v: (B, H, L, Dv); lam: a scalar (0-dim) tensor, differentiated like the rest,
    or a float; ``scale`` defaults to Dk ** -0.5; ``causal``: query i sees keys j <= i. Triton on
    CUDA, reference math elsewhere.
    """
    if not (q1.dim() == q2.dim() == k1.dim() == k2.dim() == v.dim() == 4):
        raise ValueError("differential_attention wants (B, H, L, D) tensors")
    if not (q1.shape == q2.shape == k1.shape == k2.shape) or v.shape[:-1] != q1.shape[:-1]:
        raise ValueError(
            f"differential_attention wants q1, q2, k1, k2 (B, H, L, Dk) and v (B, H, L, Dv); got "
            f"{[tuple(t.shape) for t in (q1, q2, k1, k2, v)]}"
        )
    if not (q1.dtype == q2.dtype == k1.dtype == k2.dtype == v.dtype):
        raise TypeError("q1, q2, k1, k2, v must share a dtype")
    if not isinstance(lam, Tensor):
        lam = torch.tensor(float(lam), device=q1.device)
    if lam.numel() != 1:
        raise ValueError(f"lam must be a scalar; got shape {tuple(lam.shape)}")
    lam = lam.reshape(())
    scale = q1.shape[-1] ** -0.5 if scale is None else float(scale)
    tensors = [t if t.stride(-1) == 1 else t.contiguous() for t in (q1, q2, k1, k2, v)]
    out, _, _ = torch.ops.panformer.differential_attention(*tensors, lam, bool(causal), scale)
    return out
