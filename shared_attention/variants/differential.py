"""Differential attention (Ye et al. 2024, "Differential Transformer").

Each head splits its query and key into two halves and subtracts two softmax attention maps:

    DiffAttn = (softmax(q1 k1^T * s) - lambda * softmax(q2 k2^T * s)) v
    lambda   = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,   lambda_init = 0.8 - 0.6 exp(-0.3 l)

then normalises each head (RMSNorm over its value width) and scales it by (1 - lambda_init).
q, k: (B, H, L, D) with D even (halves of D/2, so s = (D/2)^-0.5 by default); v: (B, Hkv, Lk, Dv).
Both maps go through ``functional.attention``, so every mask, score mod and backend applies; causal
self-attention on CUDA with automatic dispatch runs the fused ``panformer::differential_attention`` op.

``SharedDifferential`` is the shared-base variant (Cang, Liu, Zhang, Wang, Li 2025, "Shared DIFF
Transformer", arXiv:2501.17900): instead of two independent query/key projections, both maps come from
one shared base projection plus a low-rank part of their own, like a differential amplifier's common
signal and two small deviations:

    q_m = x (W_q + A_qm B_qm),   k_m = c (W_k + A_km B_km),   m = 1, 2   (rank r = ``rank``)

The shared base is the layer's own q/k projection (full head width D per map), the low-rank parts are
computed by ``Attention`` from the layer input x (keys: from ``context`` in cross attention), each map is
position-encoded on its own (RoPE rotates q_m, k_m), and the two maps travel concatenated as q, k of
width 2 D into the same lambda-weighted difference as DIFF (scale D^-0.5, RMSNorm over the value width
D). A KV cache therefore holds keys of width 2 D: ``KVCache(B, Hkv, T, 2 * D, v_dim=D)``.
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

    def __init__(self, *, head_dim: int, lambda_init: float, eps: float = 1e-5, value_dim: int | None = None) -> None:
        """``head_dim``: width of q and k (both maps together); ``value_dim``: width of v, default head_dim."""
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"differential attention splits each head in two: head_dim={head_dim} must be even")
        half = head_dim // 2
        self.lambda_init = lambda_init
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.norm_weight = nn.Parameter(torch.ones(value_dim or head_dim))
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


class SharedDifferentialAttention(DifferentialAttention):
    """Shared DIFF: the DIFF difference of two maps that share a base projection. The low-rank parts
    live here; ``Attention`` adds them to its base q/k (``query_maps``/``key_maps``) before positions."""

    def __init__(
        self, *, dim: int, kv_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, rank: int, lambda_init: float
    ) -> None:
        super().__init__(head_dim=2 * head_dim, value_dim=head_dim, lambda_init=lambda_init)
        if rank < 1:
            raise ValueError(f"SharedDifferential(rank={rank}): the low-rank parts need rank >= 1")
        self.rank, self.head_dim = rank, head_dim
        self.query_parts = nn.ModuleList(_low_rank(dim, rank, num_heads * head_dim) for _ in range(2))
        self.key_parts = nn.ModuleList(_low_rank(kv_dim, rank, num_kv_heads * head_dim) for _ in range(2))

    def query_maps(self, base: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """base q (B, H, L, D) from the shared projection, x (B, L, dim) -> [q_1, q_2], each (B, H, L, D)."""
        return [base + self._heads(part(x), base) for part in self.query_parts]

    def key_maps(self, base: torch.Tensor, source: torch.Tensor) -> list[torch.Tensor]:
        """base k (B, Hkv, Lk, D), source (B, Lk, kv_dim) -> [k_1, k_2], each (B, Hkv, Lk, D)."""
        return [base + self._heads(part(source), base) for part in self.key_parts]

    @staticmethod
    def _heads(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        batch, heads, length, width = like.shape
        return flat.view(batch, length, heads, width).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, {super().extra_repr()}"


def _low_rank(in_dim: int, rank: int, out_dim: int) -> nn.Sequential:
    """x A B with A (in, r), B (r, out); B starts at zero, so both maps start as the shared base (as LoRA)."""
    down, up = nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim, bias=False)
    nn.init.zeros_(up.weight)
    return nn.Sequential(down, up)


@dataclass(frozen=True)
class SharedDifferential(Variant):
    """Shared DIFF (arXiv:2501.17900) for the layer at depth ``layer_index``, low-rank parts of ``rank``.

    Built by ``Attention(variant=SharedDifferential(...))``, which passes the input widths its low-rank
    parts need; not with CoPE (its gates read one q/k per head)."""

    rank: int = 8
    layer_index: int = 0

    def build(
        self, *, num_heads: int, head_dim: int, dim: int | None = None, kv_dim: int | None = None,
        num_kv_heads: int | None = None,
    ) -> VariantModule:
        if dim is None:
            raise ValueError("SharedDifferential reads the layer input: use it as Attention(variant=SharedDifferential())")
        return SharedDifferentialAttention(
            dim=dim, kv_dim=kv_dim or dim, num_heads=num_heads, num_kv_heads=num_kv_heads or num_heads,
            head_dim=head_dim, rank=self.rank, lambda_init=lambda_init_for(self.layer_index),
        )
