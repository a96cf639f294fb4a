"""A VSFormer-style classifier: value- and shape-aware tokens with a prior-enhanced self-attention.

After VSFormer (value- and shape-aware transformer with prior-enhanced self-attention for multivariate
time-series classification). Each patch is embedded twice and the two are summed:

    value token = W_v · patch                    (magnitudes, after dataset-level standardisation)
    shape token = W_s · znorm(patch)             (the patch's shape: offset and scale removed)

Attention scores get an additive prior, one learned gate per head times a fixed (N, N) matrix fitted
on the training split: the mean over classes of the cosine similarity between the token positions of
that class's average series. Positions that look alike within a class attend to each other more from
the start; the gates let each head use or ignore the prior. The prior enters through the core's
`Bias` score modification, so the attention math stays in `shared_attention`.

Legend: B batch, C channels, T steps, N tokens, P patch length, D width, H heads, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from panformer.timeseries.models.common import masked_mean, num_patches, patchify, valid_tokens
from panformer.timeseries.models.transformer import SeriesTransformer
from shared_attention.score_mods import Bias


def znorm_patches(patches: Tensor, eps: float = 1e-5) -> Tensor:
    """patches (B, N, C, P) -> each channel of each patch standardised over its P steps."""
    mean = patches.mean(-1, keepdim=True)
    std = patches.std(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (std + eps)


class VSFormer(SeriesTransformer):
    """The plain patch transformer plus a shape embedding and the prior-enhanced attention."""

    def __init__(self, *, channels: int, max_length: int, depth: int = 2, num_heads: int = 4, dim: int = 64,
                 patch: int = 8, stride: int = 4, **kwargs: Any) -> None:
        super().__init__(channels=channels, max_length=max_length, depth=depth, num_heads=num_heads, dim=dim,
                         patch=patch, stride=stride, **kwargs)
        self.shape_embed = nn.Linear(channels * patch, dim)
        max_tokens = num_patches(max_length, patch=patch, stride=stride)
        self.register_buffer("prior", torch.zeros(max_tokens, max_tokens))
        self.prior_gate = nn.Parameter(torch.full((depth, num_heads), 0.5))

    @torch.no_grad()
    def fit_prior(self, class_means: Tensor) -> None:
        """class_means (K, C, T), already standardised: sets prior = mean_k cos-sim of token positions."""
        patches = patchify(class_means, patch=self.patch, stride=self.stride).flatten(2)  # (K, N, C·P)
        unit = nn.functional.normalize(patches, dim=-1)
        similarity = (unit @ unit.transpose(1, 2)).mean(0)  # (N, N)
        n = min(similarity.shape[0], self.prior.shape[0])
        self.prior.zero_()
        self.prior[:n, :n] = similarity[:n, :n]

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (B, K)."""
        patches = patchify(self.normalise(values, lengths), patch=self.patch, stride=self.stride)
        n = patches.shape[1]
        tokens = self.embed_patches(patches) + self.shape_embed(znorm_patches(patches).flatten(2))
        tokens = tokens + self.pos[:, :n]
        keep = valid_tokens(lengths, n, patch=self.patch, stride=self.stride)
        prior = self.prior[:n, :n]
        for gate, block in zip(self.prior_gate, self.blocks, strict=True):
            bias = Bias(gate.view(1, -1, 1, 1) * prior.view(1, 1, n, n))  # (1, H, N, N)
            tokens = block(tokens, key_padding_mask=keep, score_mod=bias)
        return self.head(masked_mean(self.norm(tokens), keep))
