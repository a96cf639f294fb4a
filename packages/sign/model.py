"""Frame-sequence classifiers on `shared_attention`: a TSLFormer-style transformer and a conv+transformer hybrid.

Legend: B batch, T frames, F input features per frame, D model width, K classes.
Every frame is one token; `valid` (B, T) marks real frames (False for padding and hand-less frames).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared_attention import Attention


class MLP(nn.Module):
    def __init__(self, dim: int, *, ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention over frames (padded frames are never attended to) and an MLP.

    `sigma_reparam`: σReparam attention projections (the core's `SigmaReparamLinear`).
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, dropout: float, sigma_reparam: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout=dropout, sigma_reparam=sigma_reparam)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ratio=mlp_ratio, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_padding_mask=valid))
        return x + self.drop(self.mlp(self.norm2(x)))


class ConvBlock(nn.Module):
    """1-D depthwise temporal convolution with a gated pointwise expansion (as in the ASL Signs winners).

    Masked frames are zeroed first, so padding at the end never changes what real frames see.
    """

    def __init__(self, dim: int, *, kernel: int, expansion: float, dropout: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, 2 * hidden)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.project = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        value, gate = self.expand(self.norm(x)).chunk(2, dim=-1)
        h = (value * torch.sigmoid(gate)) * valid.unsqueeze(-1)  # (B, T, H)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)[:, : x.shape[1]]
        return x + self.drop(self.project(nn.functional.gelu(h)))


class SignClassifier(nn.Module):
    """Embed frames, run the blocks, average the valid frames, classify.

    blocks: a list of ("attention" | "conv") per layer; TSLFormer is all attention, the hybrid
    alternates convolution groups with attention.
    sigma_reparam: σReparam projections in every attention block (against attention entropy collapse).
    """

    def __init__(
        self,
        *,
        in_features: int,
        num_classes: int,
        blocks: list[str],
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        kernel: int,
        max_frames: int,
        dropout: float,
        sigma_reparam: bool = False,
    ):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, dim), nn.LayerNorm(dim))
        self.position = nn.Parameter(torch.zeros(max_frames, dim))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                             sigma_reparam=sigma_reparam) if kind == "attention"
            else ConvBlock(dim, kernel=kernel, expansion=mlp_ratio, dropout=dropout)
            for kind in blocks
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, features: Tensor, valid: Tensor) -> Tensor:
        """features (B, T, F), valid (B, T) bool -> logits (B, K)."""
        t = features.shape[1]
        x = self.embed(features) + self.position[:t]
        for block in self.blocks:
            x = block(x, valid)
        weights = valid.unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(pooled)


def tslformer_blocks(depth: int) -> list[str]:
    return ["attention"] * depth


def hybrid_blocks(depth: int, *, convs_per_stage: int) -> list[str]:
    """`depth` stages, each `convs_per_stage` conv blocks then one transformer block."""
    return (["conv"] * convs_per_stage + ["attention"]) * depth
