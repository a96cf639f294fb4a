"""How the coordinate transformer's attention depends on interatomic distance (Kreiman et al. 2025).

The paper finds that a graph-free transformer, never told which atoms are bonded, learns attention that
falls off with distance, with a receptive field that differs by layer. We measure the same on held-out
structures: every attention layer's probabilities come out of the shared core's `AttentionMaps` probe
(the raw model, no frame averaging), and each (query atom, key atom) pair of a molecule is put in a
distance bin. Per layer and head we report

- the mean attention weight of the pairs in each bin, also times the molecule's atom count N ("relative
  to uniform": 1 is what attention spread evenly over the N atoms would give, so molecules of different
  sizes are comparable);
- the attention-weighted mean distance from a query to its keys (self at 0 Å included), beside the same
  mean under uniform attention: the layer's effective attention radius;
- the mean weight an atom puts on itself.

Legend: B structures, N atoms (padded), L layers, H heads, K distance bins.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from panformer.engine.files import write_text_atomic
from panformer.engine.plots import pyplot, save_png
from shared_attention import Attention, AttentionMaps

DISTANCE_EDGES = tuple(np.round(np.arange(0.5, 10.01, 0.5), 2).tolist())  # Å; pairs beyond the last edge: one bin
MIN_PAIRS = 100  # bins with fewer pairs are left out of the plot and the correlation
MAX_STRUCTURES = 2048  # the first test structures are plenty for the curves and keep `evaluate --plot` quick


@dataclass
class AttentionByDistance:
    """Sums over (query, key) pairs of distinct atoms, per layer, head and distance bin, and per-query sums."""

    layers: list[str]  # L names, in the model's order
    edges: np.ndarray  # (K + 1,) Å: bin k holds distances in [edges[k], edges[k + 1]); the last edge is inf
    pairs: np.ndarray  # (K,) pairs counted per bin
    weight: np.ndarray  # (L, H, K) summed attention weight
    relative: np.ndarray  # (L, H, K) summed attention weight x the molecule's atom count
    weighted_distance: np.ndarray  # (L, H) summed over queries: sum_j p_ij d_ij (Å)
    self_weight: np.ndarray  # (L, H) summed over queries: p_ii
    uniform_distance: float  # summed over queries: mean_j d_ij (Å), self included
    queries: int  # atoms summed over

    def mean_weight(self) -> np.ndarray:
        """(L, H, K) mean attention weight per pair in each bin (NaN for an empty bin)."""
        return self.weight / np.where(self.pairs > 0, self.pairs, np.nan)

    def mean_relative(self) -> np.ndarray:
        """(L, H, K) mean weight x N per pair in each bin: 1 = uniform attention."""
        return self.relative / np.where(self.pairs > 0, self.pairs, np.nan)

    def summary(self) -> dict[str, Any]:
        """Everything in JSON form (NaN as null): the bins, and per layer and head the effective radius (Å),
        the self weight, the rank correlation of relative weight with distance over bins of >= `MIN_PAIRS` pairs
        (negative: attention falls off with distance) and the per-bin means the plot draws."""
        centres = _bin_centres(self.edges)
        weight, relative = self.mean_weight(), self.mean_relative()
        populated = self.pairs >= MIN_PAIRS  # bins with few pairs would make the correlation noise
        layers = {}
        for index, name in enumerate(self.layers):
            layers[name] = {
                "effective_radius_A": _plain(self.weighted_distance[index] / self.queries),
                "self_weight": _plain(self.self_weight[index] / self.queries),
                "distance_rank_correlation": _plain(np.array([_spearman(centres[populated], head[populated])
                                                              for head in relative[index]])),
                "mean_weight": _plain(weight[index], digits=6),
                "relative_to_uniform": _plain(relative[index]),
            }
        bins = [[float(lo), None if np.isinf(hi) else float(hi)] for lo, hi in zip(self.edges[:-1], self.edges[1:],
                                                                                     strict=True)]
        return {"query_atoms": self.queries, "uniform_radius_A": round(self.uniform_distance / self.queries, 4),
                "bins_A": bins, "pairs": self.pairs.astype(int).tolist(), "layers": layers}


def _plain(values: np.ndarray, *, digits: int = 4) -> list:
    """Nested lists of rounded floats with None for NaN (strict JSON)."""
    return [None if np.isnan(v) else round(float(v), digits) for v in values] if values.ndim == 1 else \
        [_plain(row, digits=digits) for row in values]


def _bin_centres(edges: np.ndarray) -> np.ndarray:
    """(K,) the middle of each bin; the open last bin is drawn one bin width past its lower edge."""
    upper = np.array(edges[1:], dtype=float)
    upper[-1] = edges[-2] + (edges[-2] - edges[-3])
    return (np.asarray(edges[:-1], dtype=float) + upper) / 2


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (ties broken by order: none among bin centres, rare among mean weights)."""
    if len(x) < 3:
        return float("nan")
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def has_attention(model: nn.Module) -> bool:
    """Whether the model has shared-core attention layers to measure (SchNet has none)."""
    return any(isinstance(m, Attention) for m in model.modules())


@torch.no_grad()
def attention_by_distance(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], *, device: torch.device,
    edges: tuple[float, ...] = DISTANCE_EDGES,
) -> AttentionByDistance:
    """Run the raw model over padded batches (the task's layout: numbers, positions, valid; on `device`) with
    the attention-maps probe and bin every pair of distinct atoms by distance."""
    model.eval()
    inner = torch.tensor(edges, dtype=torch.float32, device=device)
    bins = len(edges) + 1
    totals: dict[str, Tensor] = {}
    pairs = torch.zeros(bins, dtype=torch.float64, device=device)
    uniform, queries = 0.0, 0
    with AttentionMaps(model) as probe:
        for batch in batches:
            positions, valid = batch["positions"], batch["valid"]
            model(batch["numbers"], positions, valid)
            distance = torch.cdist(positions.double(), positions.double()).float()  # (B, N, N)
            real = valid.unsqueeze(2) & valid.unsqueeze(1)
            other = real & ~torch.eye(valid.shape[1], dtype=torch.bool, device=device)
            atoms = valid.sum(1).to(torch.float32)  # (B,)
            which = torch.bucketize(distance[other], inner, right=True)  # (P,) bin of each pair
            pairs += torch.bincount(which, minlength=bins).double()
            uniform += float(((distance * real).sum(2) / atoms[:, None])[valid].sum())
            queries += int(valid.sum())
            for name, maps in probe.maps.items():  # (B, H, N, N)
                heads = maps.shape[1]
                p = maps.nan_to_num().permute(1, 0, 2, 3)  # (H, B, N, N)
                scaled = p * atoms[None, :, None, None]
                sums = totals.setdefault(name, torch.zeros(4, heads, bins, dtype=torch.float64, device=device))
                index = which.expand(heads, -1)
                sums[0].scatter_add_(1, index, p[:, other].double())
                sums[1].scatter_add_(1, index, scaled[:, other].double())
                query = valid.unsqueeze(0).expand(heads, -1, -1)  # (H, B, N)
                sums[2, :, 0] += ((p * distance).sum(-1))[query].view(heads, -1).double().sum(1)
                sums[3, :, 0] += torch.diagonal(p, dim1=-2, dim2=-1)[query].view(heads, -1).double().sum(1)
    if not totals:
        raise ValueError("the model has no shared_attention Attention layer to measure")
    layers = list(totals)
    stacked = torch.stack([totals[name] for name in layers]).cpu().numpy()  # (L, 4, H, K)
    return AttentionByDistance(
        layers=layers, edges=np.array([0.0, *edges, np.inf]), pairs=pairs.cpu().numpy(),
        weight=stacked[:, 0], relative=stacked[:, 1], weighted_distance=stacked[:, 2, :, 0],
        self_weight=stacked[:, 3, :, 0], uniform_distance=uniform, queries=queries,
    )


def write_attention_distance(result: AttentionByDistance, stem: Path) -> list[Path]:
    """STEM.csv (layer, head, bin, pairs, mean weight, relative to uniform), STEM.json (`summary`) and STEM.png
    (drawn from the JSON's numbers by `plot_attention_distance`)."""
    stem = Path(stem)
    weight, relative = result.mean_weight(), result.mean_relative()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layer", "head", "distance_from_A", "distance_to_A", "pairs", "mean_weight",
                     "relative_to_uniform"])
    for layer_index, name in enumerate(result.layers):
        for head in range(weight.shape[1]):
            for k in range(len(result.pairs)):
                writer.writerow([name, head, f"{result.edges[k]:g}", f"{result.edges[k + 1]:g}", int(result.pairs[k]),
                                 f"{weight[layer_index, head, k]:.6g}", f"{relative[layer_index, head, k]:.6g}"])
    csv_path, json_path, png_path = (Path(f"{stem}{suffix}") for suffix in (".csv", ".json", ".png"))
    summary = result.summary()
    write_text_atomic(csv_path, buffer.getvalue())
    write_text_atomic(json_path, json.dumps(summary, indent=1) + "\n")
    return [plot_attention_distance(summary, png_path), csv_path, json_path]


def plot_attention_distance(summary: dict[str, Any], path: Path) -> Path:
    """The mean attention weight relative to uniform against distance: one panel per layer, a line per head
    (bins with >= `MIN_PAIRS` pairs), from `AttentionByDistance.summary()` numbers (so a saved JSON replots)."""
    plt = pyplot()
    bins = summary["bins_A"]
    edges = np.array([lo for lo, _ in bins] + [np.inf])
    centres = _bin_centres(edges)
    shown = np.array(summary["pairs"]) >= MIN_PAIRS
    names = list(summary["layers"])
    columns = min(len(names), 4)
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False, sharey=True)
    for index, name in enumerate(names):
        layer = summary["layers"][name]
        ax = axes[index // columns][index % columns]
        for head in layer["relative_to_uniform"]:
            values = np.array([np.nan if v is None else v for v in head])
            ax.plot(centres[shown], values[shown], lw=1, marker=".", ms=3)
        ax.axhline(1.0, color="k", ls="--", lw=0.7)
        ax.set_yscale("log")
        radius = np.mean(layer["effective_radius_A"])
        ax.set_title(f"{name}\nradius {radius:.2f} Å (uniform {summary['uniform_radius_A']:.2f})", fontsize=8)
        ax.set_xlabel("interatomic distance (Å)")
        if index % columns == 0:
            ax.set_ylabel("attention weight x N (1 = uniform)")
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].axis("off")
    fig.suptitle(f"attention vs distance, one line per head ({summary['query_atoms']} query atoms; radius: "
                 "attention-weighted mean distance to the keys)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
