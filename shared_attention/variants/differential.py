"""Differential attention (Ye et al. 2024, "Differential Transformer").

Each head splits its query and key into two halves and subtracts two softmax attention maps:

    DiffAttn = (softmax(q1 k1^T * s) - lambda * softmax(q2 k2^T * s)) v
    lambda   = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,   lambda_init = 0.8 - 0.6 exp(-0.3 l)

then normalises each head (RMSNorm over its value width) and scales it by (1 - lambda_init).
q, k: (B, H, L, D) with D even (halves of D/2, so s = (D/2)^-0.5 by default); v: (B, Hkv, Lk, Dv).
Both maps go through ``functional.attention``, so every mask, score mod and backend applies; causal
self-attention on CUDA with automatic dispatch runs the fused ``panformer::differential_attention`` op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from panformer_kernels import differential_attention as fused_differential_attention
from panformer_kernels import fused_kernel_supports
from shared_attention.functional import attention
from shared_attention.masks import Causal
from shared_attention.variants.base import Variant, VariantModule


def lambda_init_for(layer_index: int) -> float:
    """The paper's depth schedule; ``layer_index`` counts from 0 as in the official code."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(VariantModule):
    """Two softmax maps, their lambda-weighted difference, per-head RMSNorm, (1 - lambda_init)."""

    def __init__(self, *, head_dim: int, lambda_init: float, eps: float = 1e-5) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"differential attention splits each head in two: head_dim={head_dim} must be even")
        half = head_dim // 2
        self.lambda_init = lambda_init
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.norm_weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def lambda_full(self) -> torch.Tensor:
        first = torch.exp((self.lambda_q1 * self.lambda_k1).sum().float())
        second = torch.exp((self.lambda_q2 * self.lambda_k2).sum().float())
        return first - second + self.lambda_init

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        scale = q1.shape[-1] ** -0.5 if scale is None else scale
        fused = type(mask) is Causal and score_mod is None and backend == "auto" and fused_kernel_supports(q, k, v)
        if fused:  # causal on CUDA: one pass over the keys for both maps (1.14-1.22x two SDPA calls on an H200)
            out = fused_differential_attention(q1, q2, k1, k2, v, self.lambda_full(), causal=True, scale=scale)
        else:  # (A1 - lambda A2) v == A1 v - lambda A2 v: two ordinary attention calls
            first = attention(q1, k1, v, mask=mask, score_mod=score_mod, scale=scale, backend=backend)
            second = attention(q2, k2, v, mask=mask, score_mod=score_mod, scale=scale, backend=backend)
            out = first - self.lambda_full().to(first.dtype) * second
        if out.shape[-1] != self.norm_weight.shape[0]:
            raise ValueError(f"value head width {out.shape[-1]} != head_dim {self.norm_weight.shape[0]}")
        # The weight in the output's dtype: a bf16 output with an fp32 weight misses the fused norm.
        out = F.rms_norm(out, (out.shape[-1],), self.norm_weight.to(out.dtype), self.eps)
        return out * (1 - self.lambda_init)

    def extra_repr(self) -> str:
        return f"lambda_init={self.lambda_init:.4f}"


@dataclass(frozen=True)
class Differential(Variant):
    """Differential attention for the layer at depth ``layer_index`` (from 0)."""

    layer_index: int = 0

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return DifferentialAttention(head_dim=head_dim, lambda_init=lambda_init_for(self.layer_index))
