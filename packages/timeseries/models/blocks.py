"""Building blocks shared by the time-series models."""

from __future__ import annotations

from torch import Tensor, nn

from shared_attention import Attention
from shared_attention.score_mods import ScoreMod


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    x (B, N, D); key_padding_mask (B, N), True = real token; score_mod: an extra score modification
    from `shared_attention.score_mods` (e.g. a prior bias). `attention_score_mod` is built into the
    attention layer (e.g. a learned `RelativeBias()`, whose table the layer owns).
    """

    def __init__(
        self, dim: int, *, num_heads: int, mlp_ratio: float, dropout: float, attention_score_mod: ScoreMod | None = None
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout=dropout, score_mod=attention_score_mod)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, score_mod: ScoreMod | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), key_padding_mask=key_padding_mask, score_mod=score_mod)
        return x + self.mlp(self.mlp_norm(x))
