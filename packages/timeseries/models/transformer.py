"""A plain patch-token transformer classifier for multivariate time series (the package's baseline).

    values (B, C, T) ─normalise─▶ patches (B, N, C·P) ─linear─▶ tokens (B, N, D) + learned positions
      ─▶ depth × EncoderBlock (key padding over tokens) ─▶ masked mean pool ─▶ logits (B, K)

Legend: B batch, C channels, T time steps, N patch tokens, P patch length, D width, K classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panformer.timeseries.models.blocks import EncoderBlock
from panformer.timeseries.models.common import (
    SeriesNormaliser,
    masked_mean,
    num_patches,
    patchify,
    valid_tokens,
)
from panformer.timeseries.signature import SignatureEmbedding


class SeriesTransformer(nn.Module):
    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        max_length: int,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        patch: int = 8,
        stride: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        signature_depth: int | None = None,
    ) -> None:
        super().__init__()
        self.patch, self.stride = patch, stride
        self.normalise = SeriesNormaliser(channels)
        self.embed = nn.Linear(channels * patch, dim)
        # SigFormer-style option: each patch's truncated path signature added to its token.
        self.signature = SignatureEmbedding(channels, dim, depth=signature_depth) if signature_depth else None
        self.pos = nn.Parameter(torch.zeros(1, num_patches(max_length, patch=patch, stride=stride), dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """patches (B, N, C, P) -> tokens (B, N, D), before positions."""
        tokens = self.embed(patches.flatten(2))
        if self.signature is not None:
            tokens = tokens + self.signature(patches.transpose(-1, -2))  # windows (B, N, P, C)
        return tokens

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (B, K)."""
        patches = patchify(self.normalise(values, lengths), patch=self.patch, stride=self.stride)
        tokens = self.embed_patches(patches) + self.pos[:, : patches.shape[1]]
        keep = valid_tokens(lengths, tokens.shape[1], patch=self.patch, stride=self.stride)
        for block in self.blocks:
            tokens = block(tokens, key_padding_mask=keep)
        return self.head(masked_mean(self.norm(tokens), keep))
