"""Base classes of attention variants.

A variant is a frozen dataclass *value* (hashable, comparable, printable) that says which attention
math a layer uses. ``Variant.build`` turns it into a ``VariantModule``: the ``nn.Module`` holding any
learned parameters of that math (lambda vectors, sink logits, ...). The ``Attention`` module owns
the projections and positions; the variant module only maps projected heads to attended heads.

Shapes: ``q`` (B, H, Lq, D), ``k`` (B, Hkv, Lk, D), ``v`` (B, Hkv, Lk, Dv), output (B, H, Lq, Dv),
with ``H % Hkv == 0`` (grouped-query heads).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


class VariantModule(nn.Module, abc.ABC):
    """The module of a variant: ``forward(q, k, v, *, mask, score_mod, scale, backend)``."""

    @abc.abstractmethod
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Any = None,
        score_mod: Any = None,
        scale: float | None = None,
        backend: str = "auto",
    ) -> Tensor:
        """Attend ``q`` (B, H, Lq, D) over ``k``/``v`` (B, Hkv, Lk, D/Dv); return (B, H, Lq, Dv).

        ``mask`` is a ``shared_attention.masks.Mask`` (or None), ``score_mod`` a
        ``shared_attention.score_mods.ScoreMod`` (or None), ``scale`` defaults to ``D ** -0.5``.
        """


@dataclass(frozen=True)
class Variant(abc.ABC):
    """A value naming an attention variant; ``build`` makes its module for one layer."""

    @abc.abstractmethod
    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        """Make the module for a layer with ``num_heads`` query heads of width ``head_dim``."""
