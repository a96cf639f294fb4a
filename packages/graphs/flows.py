"""Flow-graph intrusion detection: NetFlow records as edges between hosts, classified per flow.

Data: a NetFlow CSV in the NF-UNSW-NB15 / NF-CSE-CIC-IDS2018 layout (`IPV4_SRC_ADDR`, `IPV4_DST_ADDR`, numeric
flow features such as `IN_BYTES`, `OUT_PKTS`, `FLOW_DURATION_MILLISECONDS`, ..., and `Label` 0/1; an `Attack`
column is kept for reports only) or `synthetic:flows`, a seeded generator with injected port scans and DoS.
Flows are cut, in file (time) order, into windows; each window is a host graph whose edges are its flows
(as in E-GraphSAGE / GraphIDS). Windows are split chronologically into train/val/test.

Model: flow features -> edge embeddings; hosts start as the mean of their outgoing and incoming flows; layers of
local message passing over flows (torch_geometric GINEConv, edge-aware) and global attention over the hosts
of the window (shared_attention); each flow is scored from [source host, destination host, flow].

Legend: E flows in a window, N hosts, F flow features, D width.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Metrics, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from shared_attention import Attention

SRC, DST, LABEL = "IPV4_SRC_ADDR", "IPV4_DST_ADDR", "Label"
IDENTIFIERS = {SRC, DST, LABEL, "Attack", "L4_SRC_PORT", "L4_DST_PORT", "FLOW_START_MILLISECONDS",
               "FLOW_END_MILLISECONDS"}


class FlowData(StrictModel):
    source: str = Field("synthetic:flows", description="synthetic:flows or a NetFlow CSV (IPV4_SRC_ADDR, "
                        "IPV4_DST_ADDR, numeric flow features, Label)")
    synthetic_flows: int = Field(12000, ge=500)
    synthetic_seed: int = 0
    window: int = Field(1000, ge=50, description="flows per host graph")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="windows after training, chronologically")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="the last windows")


class FlowModelConfig(StrictModel):
    name: Literal["flowgraph"] = "flowgraph"
    dim: int = Field(48, ge=8)
    depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    attention: bool = Field(True, description="global attention over the hosts of a window")
    use_hosts: bool = Field(True, description="false: score flows from their own features only (a baseline)")
    dropout: float = Field(0.1, ge=0, lt=1)


class FlowRecipe(Recipe):
    default_model_name = "flowgraph"

    domain: Literal["graphs"] = "graphs"
    task: Literal["intrusion-detection"] = "intrusion-detection"
    data: FlowData = FlowData()
    model: FlowModelConfig = FlowModelConfig()


# --- data ----------------------------------------------------------------------------------------


def synthetic_flows(*, flows: int = 12000, seed: int = 0) -> pd.DataFrame:
    """SYNTHETIC NetFlow records (NF-UNSW-NB15-v3 column names), about 10% attacks:

    - normal: 120 clients talk to 12 servers (web, DNS, mail) with log-normal byte and packet counts; 10% of
      normal flows are failed connections (1-2 packets, short);
    - port scans from 3 compromised clients (which also browse normally): many hosts, tiny flows that look
      like failed connections, or (40%) flows sized like normal traffic;
    - DoS from a fourth compromised client: many small, short flows to one server.
    So a flow's own features are often not enough: who talks to whom (fan-out, fan-in) decides."""
    rng = np.random.default_rng(seed)
    clients = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(120)]
    servers = [f"10.1.0.{i + 1}" for i in range(12)]
    scanners, flooder = clients[:3], clients[3]

    def normal_sizes() -> tuple[int, int, int, int, int]:
        if rng.uniform() < 0.1:  # a failed connection: tiny and short
            return int(rng.integers(1, 3)), 0, 0, 0, int(rng.integers(0, 5))
        in_pkts = int(rng.lognormal(2.0, 0.8)) + 1
        out_pkts = int(in_pkts * rng.uniform(0.6, 1.5)) + 1
        return (in_pkts, int(in_pkts * rng.lognormal(5.5, 0.6)), out_pkts, int(out_pkts * rng.lognormal(6.0, 0.7)),
                int(rng.lognormal(5.0, 1.2)))

    rows = []
    for _ in range(flows):
        r = rng.uniform()
        if r < 0.9:
            src, dst = clients[rng.integers(len(clients))], servers[rng.integers(len(servers))]
            dport = [80, 443, 53, 25][rng.integers(4)]
            in_pkts, in_bytes, out_pkts, out_bytes, duration = normal_sizes()
            if in_bytes == 0:
                in_bytes = in_pkts * 44
            label, attack = 0, "Benign"
        elif r < 0.95:
            src = scanners[rng.integers(len(scanners))]
            dst = (clients + servers)[rng.integers(len(clients) + len(servers))]
            dport = int(rng.integers(1, 65535))
            if rng.uniform() < 0.4:  # sized like normal traffic
                in_pkts, in_bytes, out_pkts, out_bytes, duration = normal_sizes()
                in_bytes = in_bytes or in_pkts * 44
            else:
                in_pkts, out_pkts, out_bytes, duration = int(rng.integers(1, 3)), 0, 0, int(rng.integers(0, 5))
                in_bytes = in_pkts * 44
            label, attack = 1, "Reconnaissance"
        else:
            src, dst, dport = flooder, servers[0], 80
            in_pkts = int(rng.integers(2, 40))
            in_bytes = in_pkts * int(rng.integers(40, 80))
            out_pkts, out_bytes = int(rng.integers(0, 3)), int(rng.integers(0, 200))
            duration = int(rng.integers(0, 50))
            label, attack = 1, "DoS"
        rows.append((src, int(rng.integers(1024, 65535)), dst, dport, 6 if dport != 53 else 17, in_bytes, out_bytes,
                     in_pkts, out_pkts, duration, label, attack))
    return pd.DataFrame(rows, columns=[SRC, "L4_SRC_PORT", DST, "L4_DST_PORT", "PROTOCOL", "IN_BYTES", "OUT_BYTES",
                                       "IN_PKTS", "OUT_PKTS", "FLOW_DURATION_MILLISECONDS", LABEL, "Attack"])


def read_flows(path: Path, *, require_label: bool = True, features: list[str] | None = None) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a NetFlow CSV (IPV4_SRC_ADDR, IPV4_DST_ADDR, features, Label)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({type(err).__name__}); fix the file") from None
    required = [SRC, DST, *([LABEL] if require_label else []), *(features or [])]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; NetFlow CSVs need {', '.join(required[:3])}"
                        " and the flow features the model was trained on")
    if table.empty:
        raise UserError(f"{path}: no flows; an empty graph cannot be used")
    if require_label and not table[LABEL].isin([0, 1]).all():
        raise UserError(f"{path}: column Label must be 0 (benign) or 1 (attack) in every row")
    return table


def feature_columns(table: pd.DataFrame, path: str) -> list[str]:
    columns = [c for c in table.columns if c not in IDENTIFIERS and pd.api.types.is_numeric_dtype(table[c])]
    if not columns:
        raise UserError(f"{path}: no numeric flow feature columns (e.g. IN_BYTES, OUT_PKTS)")
    return columns


@dataclass
class FlowWindow:
    """One host graph: flows (E, F) as edges src -> dst over N hosts, labels (E,)."""

    features: Tensor
    edge_index: Tensor
    num_hosts: int
    labels: Tensor


def windows_of(table: pd.DataFrame, features: list[str], size: int) -> list[FlowWindow]:
    x = np.log1p(table[features].to_numpy(np.float64).clip(min=0)).astype(np.float32)  # heavy-tailed counts
    labels = table[LABEL].to_numpy(np.int64, copy=True) if LABEL in table.columns else np.zeros(len(table), np.int64)
    out = []
    for start in range(0, len(table), size):
        part = table.iloc[start : start + size]
        hosts, index = np.unique(np.concatenate([part[SRC].astype(str), part[DST].astype(str)]), return_inverse=True)
        n = len(part)
        out.append(FlowWindow(torch.from_numpy(x[start : start + n]),
                              torch.from_numpy(np.stack([index[:n], index[n:]]).astype(np.int64)), len(hosts),
                              torch.from_numpy(labels[start : start + n])))
    return out


class WindowDataset(Dataset):
    def __init__(self, windows: list[FlowWindow]) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> FlowWindow:
        return self.windows[i]


def collate_windows(items: list[FlowWindow]) -> dict[str, Tensor]:
    """Windows side by side: hosts padded to the largest window (B, N), flows concatenated with offsets."""
    width = max(w.num_hosts for w in items)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    edges = []
    for b, w in enumerate(items):
        valid[b, : w.num_hosts] = True
        edges.append(w.edge_index + b * width)
    return {"features": torch.cat([w.features for w in items]), "edge_index": torch.cat(edges, 1), "valid": valid,
            "target": torch.cat([w.labels for w in items])}


# --- model ---------------------------------------------------------------------------------------


class FlowGraphModel(nn.Module):
    """Flow logits (E,) from a batch of host graphs (see `collate_windows`)."""

    def __init__(self, *, in_features: int, dim: int = 48, depth: int = 2, num_heads: int = 4, attention: bool = True,
                 use_hosts: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        from torch_geometric.nn import GINEConv

        self.use_hosts = use_hosts
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.edge = nn.Sequential(nn.Linear(in_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.host_out, self.host_in = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.local = nn.ModuleList(GINEConv(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)),
                                            edge_dim=dim, train_eps=True) for _ in range(depth))
        self.local_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attention = nn.ModuleList(Attention(dim, num_heads, dropout=dropout) for _ in range(depth)) if attention else None
        self.attention_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        from torch_geometric.utils import scatter

        valid, edge_index = batch["valid"], batch["edge_index"]
        b, n = valid.shape
        e = self.edge((batch["features"] - self.mean) / self.std)  # (E, D)
        src, dst = edge_index
        # Hosts start as the mean of what they send and what they receive.
        h = self.host_out(scatter(e, src, 0, dim_size=b * n, reduce="mean")) + \
            self.host_in(scatter(e, dst, 0, dim_size=b * n, reduce="mean"))
        both = torch.cat([edge_index, edge_index.flip(0)], 1)
        e_both = torch.cat([e, e])
        for i, conv in enumerate(self.local):
            h = self.local_norm[i](h + conv(h, both, e_both))
            if self.attention is not None:
                x = h.view(b, n, -1)
                x = self.attention_norm[i](x + self.attention[i](x, key_padding_mask=valid))
                h = x.reshape(b * n, -1)
        if not self.use_hosts:
            h = torch.zeros_like(h)
        return self.head(torch.cat([h[src], h[dst], e], -1))[:, 0]


# --- metrics -------------------------------------------------------------------------------------


class DetectionMetrics(Metrics):
    """Per-flow attack detection: accuracy, macro F1, attack precision/recall/F1, ROC-AUC, PR-AUC."""

    def __init__(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, batch: dict[str, Tensor], outputs: Tensor) -> None:
        self.scores.append(outputs.detach().float().cpu())
        self.labels.append(batch["target"].cpu())

    def compute(self) -> dict[str, float]:
        from sklearn.metrics import (
            average_precision_score,
            f1_score,
            precision_score,
            recall_score,
            roc_auc_score,
        )

        score, label = torch.cat(self.scores).numpy(), torch.cat(self.labels).numpy()
        pred = (score > 0).astype(np.int64)
        both = len(np.unique(label)) == 2
        return {
            "accuracy": float((pred == label).mean()),
            "macro_f1": float(f1_score(label, pred, average="macro", zero_division=0)),
            "precision": float(precision_score(label, pred, zero_division=0)),
            "recall": float(recall_score(label, pred, zero_division=0)),
            "f1": float(f1_score(label, pred, zero_division=0)),
            "roc_auc": float(roc_auc_score(label, score)) if both else float("nan"),
            "pr_auc": float(average_precision_score(label, score)) if both else float("nan"),
        }


# --- task ----------------------------------------------------------------------------------------


class IntrusionDetectionTask(Task):
    monitor = "macro_f1"
    monitor_mode = "max"

    def _table(self, source: str, data: FlowData) -> pd.DataFrame:
        if source == "synthetic:flows":
            return synthetic_flows(flows=data.synthetic_flows, seed=data.synthetic_seed)
        if source.startswith("synthetic:"):
            raise UserError(f"--data {source}: the intrusion-detection task's synthetic set is synthetic:flows")
        return read_flows(Path(source))

    def load_splits(self, recipe: FlowRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        table = self._table(source, data)
        features = feature_columns(table, source)
        windows = windows_of(table, features, data.window)
        n = len(windows)
        n_test, n_val = max(1, round(data.test_fraction * n)), max(1, round(data.val_fraction * n))
        if n - n_test - n_val < 1:
            raise UserError(f"--data {source}: {len(table)} flows make {n} windows of {data.window}; "
                            "lower data.window to get train, validation and test windows")
        train, val, test = windows[: n - n_test - n_val], windows[n - n_test - n_val : n - n_test], windows[n - n_test :]
        info = {"task": "intrusion-detection", "source": source, "features": features, "window": data.window,
                "split_windows": {"train": len(train), "val": len(val), "test": len(test)},
                "attack_rate": float(table[LABEL].mean())}
        digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()[:16]
        return Splits(WindowDataset(train), WindowDataset(val), WindowDataset(test), info=info, fingerprint=digest)

    def build_model(self, recipe: FlowRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        return FlowGraphModel(in_features=len(info["features"]), dim=cfg.dim, depth=cfg.depth,
                              num_heads=cfg.num_heads, attention=cfg.attention, use_hosts=cfg.use_hosts,
                              dropout=cfg.dropout)

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        x = torch.cat([w.features for w in splits.train.windows])
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp(min=1e-3))

    def collate(self, items: list[FlowWindow]) -> dict[str, Tensor]:
        return collate_windows(items)

    def batch_size_of(self, batch: dict[str, Tensor]) -> int:
        return int(batch["target"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = model(batch).float()
        return nn.functional.binary_cross_entropy_with_logits(logits, batch["target"].float()), logits.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return DetectionMetrics()

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: FlowRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        """Per flow (file order): `flow, src, dst, attack_probability, predicted` (1 = attack)."""
        from panformer.engine.trainer import to_device

        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        table = read_flows(input_path, require_label=False, features=info["features"])
        for column in info["features"]:
            if not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().any():
                raise UserError(f"{input_path}: column {column} must be numeric with no empty values")
        model.eval()
        probs = []
        for window in windows_of(table, info["features"], info["window"]):
            probs.append(torch.sigmoid(model(to_device(collate_windows([window]), device)).float()).cpu())
        p = torch.cat(probs).numpy()
        out = pd.DataFrame({"flow": np.arange(len(table)), "src": table[SRC].astype(str), "dst": table[DST].astype(str),
                            "attack_probability": p.round(6), "predicted": (p > 0.5).astype(int)})
        with atomic_path(output_path) as tmp:
            out.to_csv(tmp, index=False)
        return [output_path]

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path:
        """Precision-recall curve of the attack scores on the test flows."""
        from sklearn.metrics import precision_recall_curve

        from panformer.engine.plots import pyplot, save_png
        from panformer.engine.trainer import evaluate_model

        metrics = DetectionMetrics()
        scores = evaluate_model(self, model, dataset, info, batch_size=batch_size, device=device, metrics=metrics)
        score, label = torch.cat(metrics.scores).numpy(), torch.cat(metrics.labels).numpy()
        precision, recall, _ = precision_recall_curve(label, score)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(recall, precision)
        ax.set_xlabel("recall (attacks found)")
        ax.set_ylabel("precision")
        ax.set_title(f"attack flows: PR-AUC {scores['pr_auc']:.3f}, macro F1 {scores['macro_f1']:.3f}")
        fig.tight_layout()
        return save_png(fig, path)

    def demo_input(self, recipe: FlowRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The last window of flows (test period), labels removed."""
        table = self._table(info["source"], recipe.data).iloc[-info["window"] :]
        path = workdir / "flows.csv"
        with atomic_path(path) as tmp:
            table.drop(columns=[LABEL, "Attack"], errors="ignore").to_csv(tmp, index=False)
        return path
