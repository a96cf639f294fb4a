"""A decoder-only transformer over compound tokens, on `shared_attention`.

Legend: B batch, L events, F fields per event (6 for MMT, 1 for single-field tokens such as REMI),
D model width, V_f the vocabulary size of field f.

Each event is embedded as the sum of one embedding per field; after causal self-attention blocks one
linear head per field predicts the next event's codes (MMT, Dong et al. 2023). Decoding one event at a
time uses the core's `KVCache` (one per layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from shared_attention import Attention, Causal, KVCache, LearnedAbsolute, RoPE, Variant


class MLP(nn.Module):
    def __init__(self, dim: int, *, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention and an MLP."""

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, dropout: float, position: str,
                 max_len: int, variant: Variant | None) -> None:
        super().__init__()
        encoding = RoPE() if position == "rope" else LearnedAbsolute(max_len=max_len)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, position=encoding, variant=variant, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ratio=mlp_ratio, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, cache: KVCache | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask=Causal(), cache=cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class CompoundTransformer(nn.Module):
    """Codes (B, L, F) -> one logits tensor (B, L, V_f) per field, for the next event.

    Args:
        vocab_sizes: V_f of each field.
        dim, depth, num_heads, mlp_ratio, dropout: the transformer's shape.
        max_len: the longest sequence (positions of learned encodings, KV-cache capacity).
        position: "rope" (rotary, in the core) or "learned" (absolute, as MMT's x-transformers default).
        variant: a causal attention variant of the core (MoBA(causal=True), Routing(causal=True), ...) in
            every block; default dense softmax.
    """

    def __init__(
        self,
        *,
        vocab_sizes: Sequence[int],
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_len: int = 1024,
        position: str = "rope",
        variant: Variant | None = None,
    ) -> None:
        super().__init__()
        self.vocab_sizes = list(vocab_sizes)
        self.max_len = max_len
        self.embeddings = nn.ModuleList(nn.Embedding(v, dim) for v in self.vocab_sizes)
        self.blocks = nn.ModuleList(
            DecoderBlock(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, position=position,
                         max_len=max_len, variant=variant)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, v) for v in self.vocab_sizes)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads

    def forward(self, codes: Tensor, *, caches: Sequence[KVCache] | None = None) -> list[Tensor]:
        """codes (B, L, F) -> [logits (B, L, V_f) for each field f]; with `caches`, L new events."""
        x = sum(embed(codes[..., f]) for f, embed in enumerate(self.embeddings))
        for i, block in enumerate(self.blocks):
            x = block(x, cache=caches[i] if caches is not None else None)
        x = self.norm(x)
        return [head(x) for head in self.heads]

    def new_caches(self, batch_size: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> list[KVCache]:
        """One empty KVCache per layer, holding up to `max_len` events."""
        return [KVCache(batch_size, self.num_heads, self.max_len, self.head_dim, dtype=dtype, device=device)
                for _ in self.blocks]
