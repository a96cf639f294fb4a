"""Baselines from torch_geometric (GCN, GIN, GAT, and PyG's own GPSConv) reading the same padded batches as
our graph transformer, so the benchmark compares models on identical data and splits.

Legend: B graphs, N nodes per graph (padded), F input features, C outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, GPSConv
from torch_geometric.nn.models import GAT, GCN, GIN


class PygGPS(nn.Module):
    """PyG's GPSConv stack (GIN local + its own multi-head attention), the reference GPS implementation.

    Works on the real nodes only (padding removed), with PyG's `batch` vector."""

    def __init__(self, *, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int,
                 dropout: float, act: str = "gelu", heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(in_channels, hidden_channels)
        self.layers = nn.ModuleList(
            GPSConv(hidden_channels, GINConv(nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.GELU(),
                                                           nn.Linear(hidden_channels, hidden_channels))),
                    heads=heads, dropout=dropout, norm="layer_norm")
            for _ in range(num_layers)
        )
        self.out = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, *, valid: Tensor) -> Tensor:
        """x (B*N, F) padded, valid (B, N) -> (B*N, out) with zeros on padding."""
        keep = valid.flatten()
        new_index = torch.cumsum(keep.long(), 0) - 1  # padded nodes have no edges, so all ends are kept
        batch = torch.arange(valid.shape[0], device=x.device).repeat_interleave(valid.shape[1])[keep]
        h = self.embed(x[keep])
        for layer in self.layers:
            h = layer(h, new_index[edge_index], batch=batch)
        out = x.new_zeros(x.shape[0], self.out.out_features)
        out[keep] = self.out(h)
        return out


PYG_MODELS = {"gcn": GCN, "gin": GIN, "gat": GAT, "pyg-gps": PygGPS}


class MessagePassingBaseline(nn.Module):
    """torch_geometric's GCN / GIN / GAT / GPSConv over node features only (no positional encodings, no
    distance bias)."""

    def __init__(self, *, name: Literal["gcn", "gin", "gat", "pyg-gps"], in_features: int, out_features: int,
                 level: Literal["node", "graph"], dim: int = 64, depth: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.level = level
        self.net = PYG_MODELS[name](in_channels=in_features, hidden_channels=dim, num_layers=depth,
                                    out_channels=dim, dropout=dropout, act="gelu")
        self.head = nn.Sequential(nn.GELU(), nn.Linear(dim, out_features))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """-> node logits (B, N, C) or graph outputs (B, C)."""
        x, valid = batch["x"], batch["valid"]
        b, n, f = x.shape
        flat = x.reshape(b * n, f)
        if isinstance(self.net, PygGPS):
            h = self.net(flat, batch["edge_index"], valid=valid)
        else:
            h = self.net(flat, batch["edge_index"])
        h = h.view(b, n, -1) * valid[..., None]
        if self.level == "graph":
            h = h.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        return self.head(h)
