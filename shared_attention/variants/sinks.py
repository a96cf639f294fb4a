"""Learned attention sinks / register tokens (Xiao et al. 2023, "Efficient Streaming Language
Models with Attention Sinks"; Darcet et al. 2023, "Vision Transformers Need Registers").

Each head gets ``num_sinks`` learned key/value pairs placed before the real keys. Every query may
attend them, whatever the mask, so a head can park attention mass there instead of on real tokens.
The values start at zero: a fresh sink only absorbs probability (a learned "no-op" logit) and
learns to carry content.

The sinks go through ``functional.attention``: the mask and score mod are shifted past the sink
positions, so every backend runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from shared_attention.functional import attention
from shared_attention.masks import Mask
from shared_attention.score_mods import ScoreMod
from shared_attention.variants.base import Variant, VariantModule


def _shift(kv_idx: Tensor, num_sinks: int) -> Tensor:
    # Sink columns map to key 0 of the inner mask; their result is overridden anyway.
    return (kv_idx - num_sinks).clamp(min=0)


@dataclass(frozen=True, eq=False)
class AfterSinks(Mask):
    """``inner`` over the real keys; the first ``num_sinks`` key positions are always allowed."""

    inner: Mask
    num_sinks: int
    batch_dependent: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "batch_dependent", self.inner.batch_dependent)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        inner = self.inner.allowed(b, h, q_idx, _shift(kv_idx, self.num_sinks), q_len, kv_len - self.num_sinks)
        return (kv_idx < self.num_sinks) | inner

    def batch_size(self):
        return self.inner.batch_size()

    def device(self):
        return self.inner.device()


@dataclass(frozen=True, eq=False)
class AfterSinksScoreMod(ScoreMod):
    """``inner`` over the real keys; the sink logits are left as they are."""

    inner: ScoreMod
    num_sinks: int

    def __post_init__(self):
        object.__setattr__(self, "additive", self.inner.additive)

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        shifted = self.inner.modify(score, b, h, q_idx, _shift(kv_idx, self.num_sinks), q_len, kv_len - self.num_sinks)
        return torch.where(kv_idx < self.num_sinks, score, shifted)


class SinkAttention(VariantModule):
    """Softmax attention over [sinks; keys]. Sink parameters: keys (H, S, D), values (H, S, Dv)."""

    def __init__(self, *, num_heads: int, head_dim: int, num_sinks: int) -> None:
        super().__init__()
        self.num_sinks = num_sinks
        self.sink_keys = nn.Parameter(torch.randn(num_heads, num_sinks, head_dim) * head_dim**-0.5)
        self.sink_values = nn.Parameter(torch.zeros(num_heads, num_sinks, head_dim))

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        batch, heads = q.shape[:2]
        if heads != k.shape[1]:
            # Sinks are per query head: give every query head its own key/value head.
            k = k.repeat_interleave(heads // k.shape[1], dim=1)
            v = v.repeat_interleave(heads // v.shape[1], dim=1)
        sink_k = self.sink_keys.to(k.dtype).expand(batch, -1, -1, -1)
        sink_v = self.sink_values.to(v.dtype).expand(batch, -1, -1, -1)
        k = torch.cat((sink_k, k), dim=2)
        v = torch.cat((sink_v, v), dim=2)
        # Without a mask the sinks need no shifting; with one, shift it past the sinks.
        mask = AfterSinks(mask, self.num_sinks) if mask is not None else None
        score_mod = AfterSinksScoreMod(score_mod, self.num_sinks) if score_mod is not None else None
        return attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale, backend=backend)

    def extra_repr(self) -> str:
        return f"num_sinks={self.num_sinks}"


@dataclass(frozen=True)
class Sinks(Variant):
    """Softmax attention with ``num_sinks`` learned sink (register) key/value tokens per head."""

    num_sinks: int = 1

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return SinkAttention(num_heads=num_heads, head_dim=head_dim, num_sinks=self.num_sinks)
