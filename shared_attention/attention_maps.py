"""Attention maps: the softmax probabilities each ``Attention`` layer computed in its last call.

For analyses of what attention learned, e.g. how a molecule model's attention falls off with the
interatomic distance (Kreiman et al. 2025, "Transformers Discover Molecular Structure Without Graph
Priors"). ``AttentionMaps`` hooks every ``Attention`` module of a model through the layer's probe slot
(as ``AttentionEntropy`` does) and keeps the probabilities of each layer's most recent call:

    with AttentionMaps(model) as probe:
        for batch in batches:
            model(batch)
            probe.maps["blocks.0.attn"]      # (B, H, Lq, Lk), fp32, rows sum to 1 over allowed keys

The probabilities are recomputed from the layer's queries and keys by the reference math (fp32,
materialised scores, no gradients), so a probed forward pass costs one more (B, H, Lq, Lk) tensor per
layer; use it for analysis batches, not in training.
Legend: B batch, H heads, Lq / Lk query / key lengths, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared_attention.api import Attention
from shared_attention.masks import Mask
from shared_attention.score_mods import ScoreMod
from shared_attention.variants.softmax import SoftmaxAttention


def softmax_probabilities(
    q: Tensor, k: Tensor, *, mask: Mask | None = None, score_mod: ScoreMod | None = None, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale + score mod, masked) over keys: q (B, H, Lq, D), k (B, Hkv, Lk, D) -> (B, H, Lq, Lk),
    fp32; a query with no allowed key gets a row of NaN."""
    q, k = q.float(), k.float()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if score_mod is not None:
        scores = score_mod.apply(scores)
    if mask is not None:
        scores = scores.masked_fill(~mask.dense(q.shape[2], k.shape[2], device=q.device), float("-inf"))
    return scores.softmax(dim=-1)


class AttentionMaps:
    """Context manager: ``maps[name]`` holds the attention probabilities (B, H, Lq, Lk) of the last call of
    each softmax ``Attention`` module of ``model`` made inside the ``with`` block (detached, on the layer's
    device). A layer with a variant other than softmax (no single softmax distribution) makes the
    constructor raise."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        unsupported = [f"{name} ({type(m.variant).__name__})" for name, m in self.layers.items()
                       if m.variant is not None and not isinstance(m.variant, SoftmaxAttention)]
        if unsupported:
            raise ValueError("attention maps need softmax attention; these layers have another variant: "
                             + ", ".join(unsupported))
        self.maps: dict[str, Tensor] = {}

    def __enter__(self) -> AttentionMaps:
        for name, layer in self.layers.items():
            if layer.probe is not None:
                raise RuntimeError(f"{name} is already probed (one probe per layer at a time)")
            layer.probe = _MapProbe(self, name)
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers.values():
            layer.probe = None


class _MapProbe:
    """What ``Attention.forward`` calls with its queries, keys, mask and score mod."""

    def __init__(self, owner: AttentionMaps, name: str) -> None:
        self.owner, self.name = owner, name

    @torch.no_grad()
    def __call__(self, layer: Attention, q: Tensor, k: Tensor, *, mask, score_mod, query_valid: Tensor | None) -> None:
        self.owner.maps[self.name] = softmax_probabilities(q, k, mask=mask, score_mod=score_mod, scale=layer.scale)


__all__ = ["AttentionMaps", "softmax_probabilities"]
