"""Sparse attention distributions: sparsemax and entmax-1.5 in place of the softmax.

Both map scores to probabilities that are exactly zero outside a support (Martins & Astudillo 2016;
Peters, Niculae & Martins 2019, "Sparse Sequence-to-Sequence Models"; Correia et al. 2019,
"Adaptively Sparse Transformers"). Each is computed exactly with a sort over the keys, and has a
closed-form backward pass (autograd.Function), so gradients are exact too.

Attention with them materialises the scores (B, H, Lq, Lk): no fused kernel exists for these maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from shared_attention.variants.base import Variant, VariantModule


def _support_threshold(valid: Tensor, tau: Tensor) -> Tensor:
    """Pick tau at the last sorted position where ``valid`` holds (the support is a prefix)."""
    support_size = valid.sum(dim=-1, keepdim=True)
    return tau.gather(-1, support_size - 1)


class _Sparsemax(torch.autograd.Function):
    """sparsemax(z) = argmin_{p in simplex} ||p - z||^2, along the last dim."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        z = z - z.amax(dim=-1, keepdim=True)
        z_sorted = z.sort(dim=-1, descending=True).values
        cumsum = z_sorted.cumsum(dim=-1)
        rank = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        in_support = 1 + rank * z_sorted > cumsum
        tau = _support_threshold(in_support, (cumsum - 1) / rank)
        p = (z - tau).clamp(min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return support * (grad - mean)


class _Entmax15(torch.autograd.Function):
    """entmax-1.5(z) = [z / 2 - tau]_+^2 with tau such that the result sums to one."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        x = (z - z.amax(dim=-1, keepdim=True)) / 2
        x_sorted = x.sort(dim=-1, descending=True).values
        rank = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        mean = x_sorted.cumsum(-1) / rank
        mean_sq = (x_sorted**2).cumsum(-1) / rank
        delta = (1 - rank * (mean_sq - mean**2)) / rank
        tau = mean - delta.clamp(min=0).sqrt()
        tau_star = _support_threshold(tau <= x_sorted, tau)
        p = (x - tau_star).clamp(min=0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        # Jacobian: diag(s) - s s^T / sum(s), with s = sqrt(p).
        s = p.sqrt()
        grad_s = grad * s
        return grad_s - s * grad_s.sum(-1, keepdim=True) / s.sum(-1, keepdim=True)


def sparsemax(scores: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``scores`` onto the probability simplex along ``dim``."""
    return _Sparsemax.apply(scores.transpose(dim, -1)).transpose(dim, -1)


def entmax15(scores: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax of ``scores`` along ``dim`` (between softmax and sparsemax in sparsity)."""
    return _Entmax15.apply(scores.transpose(dim, -1)).transpose(dim, -1)


_TRANSFORMS = {"sparsemax": sparsemax, "entmax15": entmax15}


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    transform: str,
    mask: Any = None,
    score_mod: Any = None,
    scale: float | None = None,
) -> Tensor:
    """Attention whose distribution is ``transform`` ("sparsemax" or "entmax15") of the scores.

    q (B, H, Lq, D); k (B, Hkv, Lk, D); v (B, Hkv, Lk, Dv) -> (B, H, Lq, Dv). Computed in fp32 (or
    fp64); queries with no allowed key get zeros.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-1, -2)) * scale
    if score_mod is not None:
        scores = score_mod.apply(scores)
    if mask is not None:
        allowed = mask.dense(q.shape[-2], k.shape[-2], device=q.device)
        has_key = allowed.any(dim=-1, keepdim=True)
        # -inf drops a key from the support; rows with no key at all are zeroed below.
        scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
    probs = _TRANSFORMS[transform](scores, dim=-1)
    if mask is not None:
        probs = probs * has_key
    return (probs @ v.to(compute_dtype)).to(v.dtype)


class SparseAttention(VariantModule):
    """Materialised attention with a sparse distribution; one implementation (no backends)."""

    def __init__(self, transform: str) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        if backend not in ("auto", "reference"):
            raise ValueError(
                f"{self.transform} attention has one implementation (materialised scores); "
                f"backend must be 'auto' or 'reference', got {backend!r}"
            )
        return sparse_attention(q, k, v, transform=self.transform, mask=mask, score_mod=score_mod, scale=scale)

    def extra_repr(self) -> str:
        return self.transform


@dataclass(frozen=True)
class Sparsemax(Variant):
    """Sparsemax attention (Martins & Astudillo 2016)."""

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return SparseAttention("sparsemax")


@dataclass(frozen=True)
class Entmax15(Variant):
    """1.5-entmax attention (Peters et al. 2019; Correia et al. 2019 with alpha fixed at 1.5)."""

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return SparseAttention("entmax15")
