"""Standard softmax attention: the default variant, a thin module over ``functional.attention``."""

from __future__ import annotations

from dataclasses import dataclass

from shared_attention.functional import attention
from shared_attention.variants.base import Variant, VariantModule


class SoftmaxAttention(VariantModule):
    """softmax(q k^T * scale + score mods, masked) v, dispatched to the fastest backend."""

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        return attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale, backend=backend)


@dataclass(frozen=True)
class Softmax(Variant):
    """Standard scaled dot-product softmax attention (the default)."""

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return SoftmaxAttention()
