"""Attention entropy: how spread out each head's attention distribution is, per layer.

Zhai et al. 2023 ("Stabilizing Transformer Training by Preventing Attention Entropy Collapse",
arXiv:2303.06296) track the mean entropy of each head's attention rows, -sum_j A_ij log A_ij averaged
over queries i: collapsing entropy goes with unstable training, and σReparam
(``shared_attention.sigma_reparam``) prevents it. ``AttentionEntropy`` collects it from every
``Attention`` module of a model during a forward pass:

    with AttentionEntropy(model) as probe:
        model(batch)
    probe.layer_means()      # {"blocks.0.attention": 2.71, ...} in nats
    probe.head_means()       # {"blocks.0.attention": tensor (H,), ...}

The distributions are recomputed from the layer's queries and keys by the reference math (fp32,
materialised (B, H, Lq, Lk) scores, no gradients): the probe is for a batch, not for every step.
Legend: B batch, H heads, Lq / Lk query / key lengths, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared_attention.api import Attention
from shared_attention.attention_maps import softmax_probabilities
from shared_attention.masks import Mask
from shared_attention.score_mods import ScoreMod
from shared_attention.variants.softmax import SoftmaxAttention


def softmax_entropy(
    q: Tensor, k: Tensor, *, mask: Mask | None = None, score_mod: ScoreMod | None = None, scale: float | None = None
) -> Tensor:
    """Entropy (nats) of softmax(q k^T * scale + score mod, masked) per query: q (B, H, Lq, D), k (B, Hkv, Lk, D)
    -> (B, H, Lq), fp32; NaN for a query with no allowed key."""
    probabilities = softmax_probabilities(q, k, mask=mask, score_mod=score_mod, scale=scale)
    # entr(0) = 0: masked keys add nothing; a row of -inf gives NaN probabilities and so a NaN entropy.
    return torch.special.entr(probabilities).sum(dim=-1)


class AttentionEntropy:
    """Context manager: mean attention entropy of each ``Attention`` module of ``model``, per head.

    Every call of a layer inside the ``with`` block adds its queries' entropies (over the batch, and over
    real queries only when a self-attention call gets a ``key_padding_mask``). Softmax layers (no variant,
    or ``Softmax``) and variants with an ``attention_entropy`` method (``HiLo``) are measured; a layer
    whose variant has no single softmax distribution (differential, linear, sparse, sinks, ...) makes the
    constructor raise. Each measured call materialises its (B, H, Lq, Lk) scores in fp32.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        unsupported = [f"{name} ({type(m.variant).__name__})" for name, m in self.layers.items() if not _measurable(m)]
        if unsupported:
            raise ValueError(
                "attention entropy needs softmax attention (or HiLo); these layers have none: " + ", ".join(unsupported)
            )
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}

    def __enter__(self) -> AttentionEntropy:
        for name, layer in self.layers.items():
            layer.probe = _LayerProbe(self, name)
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers.values():
            layer.probe = None

    def record(self, name: str, entropy: Tensor, query_valid: Tensor | None) -> None:
        """Add one call's entropies (B, H, Lq); ``query_valid`` bool (B, Lq) keeps real queries only."""
        keep = ~entropy.isnan()
        if query_valid is not None:
            keep = keep & query_valid[:, None, :].to(keep.device)
        sums = entropy.nan_to_num().mul(keep).sum(dim=(0, 2)).cpu()
        counts = keep.sum(dim=(0, 2)).cpu()
        self._sums[name] = self._sums.get(name, 0) + sums
        self._counts[name] = self._counts.get(name, 0) + counts

    def head_means(self) -> dict[str, Tensor]:
        """Mean entropy per head (H,) of each layer called inside the block, in nats."""
        return {name: self._sums[name] / self._counts[name].clamp(min=1) for name in self._sums}

    def layer_means(self) -> dict[str, float]:
        """Mean over heads of ``head_means``, per layer, in nats."""
        return {name: float(means.mean()) for name, means in self.head_means().items()}


def _measurable(layer: Attention) -> bool:
    return layer.variant is None or isinstance(layer.variant, SoftmaxAttention) or hasattr(layer.variant, "attention_entropy")


class _LayerProbe:
    """What ``Attention.forward`` calls with its queries, keys, mask and score mod."""

    def __init__(self, owner: AttentionEntropy, name: str) -> None:
        self.owner, self.name = owner, name

    @torch.no_grad()
    def __call__(self, layer, q: Tensor, k: Tensor, *, mask, score_mod, query_valid: Tensor | None) -> None:
        if layer.variant is not None and hasattr(layer.variant, "attention_entropy"):
            entropy = layer.variant.attention_entropy(q, k, mask=mask, score_mod=score_mod)
        else:
            entropy = softmax_entropy(q, k, mask=mask, score_mod=score_mod, scale=layer.scale)
        if query_valid is not None and query_valid.shape[1] != q.shape[2]:
            query_valid = None  # padding over keys that are not the queries (a cache, extra tokens)
        self.owner.record(self.name, entropy, query_valid)


__all__ = ["AttentionEntropy", "softmax_entropy"]
