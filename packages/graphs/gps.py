"""A GPS-style graph transformer (Rampasek et al., 2022): each layer adds local message passing (GIN, from
torch_geometric) and global attention (shared_attention) over the nodes of each graph, with Laplacian
eigenvector and random-walk positional encodings and Graphormer's shortest-path-distance attention bias.

Legend: B graphs, N nodes per graph (padded), D model width, H heads, F input features, K lap-PE width,
R random-walk steps, E edges (indices into the flattened B * N nodes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, GINConv

from shared_attention import Attention, Bias, EdgeIndex, Mask

GlobalAttention = Literal["full", "sparse", "none"]
LocalConv = Literal["gin", "gcn", "none"]


def mlp(dim: int, hidden: int, out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class GPSLayer(nn.Module):
    """h -> norm(h + local(h)) + g * norm(h + attention(h)), then a feed-forward block; both branches post-norm.

    g is 1, or with `attention_gate` a learned scalar that starts at zero (ReZero, Bachlechner et al., 2020): the
    layer starts as the local message-passing layer and training opens the global branch only as far as it
    lowers the loss, which keeps small graphs from being mixed across communities by an untrained attention.
    """

    def __init__(self, dim: int, *, num_heads: int, local: LocalConv = "gin", attention: GlobalAttention = "full",
                 attention_gate: bool = False, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.local = None
        if local == "gin":
            self.local = GINConv(mlp(dim, dim, dim), train_eps=True)
        elif local == "gcn":
            self.local = GCNConv(dim, dim)
        self.attention = Attention(dim, num_heads, dropout=dropout) if attention != "none" else None
        self.gate = nn.Parameter(torch.zeros(1)) if attention_gate and self.attention is not None else None
        self.norm_local, self.norm_attention = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = mlp(dim, int(dim * mlp_ratio), dim, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, *, valid: Tensor, edge_index: Tensor, mask: Mask | None,
                bias: Tensor | None) -> Tensor:
        """h (B, N, D), valid (B, N), edge_index (2, E), bias (B, H, N, N) or None -> (B, N, D)."""
        batch, nodes, dim = h.shape
        out = torch.zeros_like(h)
        if self.local is not None:
            local = self.local(h.reshape(batch * nodes, dim), edge_index).view(batch, nodes, dim)
            out = out + self.norm_local(h + self.dropout(local))
        if self.attention is not None:
            score_mod = Bias(bias) if bias is not None else None
            global_ = self.attention(h, mask=mask, score_mod=score_mod, key_padding_mask=valid)
            global_ = self.norm_attention(h + self.dropout(global_))
            out = out + (global_ if self.gate is None else self.gate * global_)
        out = self.norm_ffn(out + self.dropout(self.ffn(out)))
        return out * valid[..., None]


class GraphTransformer(nn.Module):
    """Node or graph predictions from a padded batch of graphs (see `panformer.graphs.data.collate`).

    Args:
        in_features: F; lap_pe: K; walk_steps: R; max_distance: shortest-path buckets (0: no bias).
        out_features: classes (or 1 for regression); level: "node" (per-node outputs) or "graph" (mean pool).
    """

    def __init__(self, *, in_features: int, out_features: int, level: Literal["node", "graph"], dim: int = 64,
                 depth: int = 3, num_heads: int = 4, lap_pe: int = 8, walk_steps: int = 16, max_distance: int = 8,
                 local: LocalConv = "gin", attention: GlobalAttention = "full", attention_gate: bool = False,
                 mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.level, self.attention_kind, self.num_heads = level, attention, num_heads
        self.embed = nn.Linear(in_features, dim)
        self.lap = nn.Linear(lap_pe, dim, bias=False) if lap_pe else None
        self.walk = nn.Linear(walk_steps, dim, bias=False) if walk_steps else None
        # Graphormer: one learned scalar per head and distance bucket (0..max, plus "unreachable").
        self.distance_bias = nn.Embedding(max_distance + 2, num_heads) if max_distance and attention != "none" else None
        self.layers = nn.ModuleList(
            GPSLayer(dim, num_heads=num_heads, local=local, attention=attention, attention_gate=attention_gate,
                     mlp_ratio=mlp_ratio, dropout=dropout)
            for _ in range(depth)
        )
        self.head = mlp(dim, dim, out_features, dropout)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """-> node logits (B, N, C) or graph outputs (B, C)."""
        valid = batch["valid"]
        h = self.embed(batch["x"])
        if self.lap is not None:
            lap = batch["lap"]
            if self.training:  # eigenvector signs are arbitrary: learn to ignore them
                sign = torch.randint(0, 2, (lap.shape[0], 1, lap.shape[2]), device=lap.device) * 2 - 1
                lap = lap * sign
            h = h + self.lap(lap)
        if self.walk is not None:
            h = h + self.walk(batch["walk"])
        h = h * valid[..., None]
        bias = None
        if self.distance_bias is not None and "spd" in batch:
            bias = self.distance_bias(batch["spd"].long()).permute(0, 3, 1, 2).contiguous()  # (B, H, N, N)
        mask = self._adjacency_mask(batch["edge_index"], valid) if self.attention_kind == "sparse" else None
        for layer in self.layers:
            h = layer(h, valid=valid, edge_index=batch["edge_index"], mask=mask, bias=bias)
        if self.level == "graph":
            h = h.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        return self.head(h)

    @staticmethod
    def _adjacency_mask(edge_index: Tensor, valid: Tensor) -> EdgeIndex:
        """Sparse attention: each node attends itself and its neighbours, one adjacency per graph."""
        batch, nodes = valid.shape
        graph = edge_index[0] // nodes
        return EdgeIndex([edge_index[:, graph == b] - b * nodes for b in range(batch)], num_nodes=nodes)
