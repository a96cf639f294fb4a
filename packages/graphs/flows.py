"""Flow-graph intrusion detection: NetFlow records as edges between hosts; self-supervised edge representation
learning, anomaly scores, and a per-flow classifier when labels exist (after GraphIDS).

Data: a NetFlow CSV in the NF-UNSW-NB15 / NF-CSE-CIC-IDS2018 layout (`IPV4_SRC_ADDR`, `IPV4_DST_ADDR`, numeric
flow features such as `IN_BYTES`, `OUT_PKTS`, `FLOW_DURATION_MILLISECONDS`, ..., and `Label` 0/1; an `Attack`
column is kept for reports only) or `synthetic:flows`, a seeded generator with injected port scans and DoS.
Flows are cut, in file (time) order, into windows; each window is a host graph whose edges are its flows
(as in E-GraphSAGE / GraphIDS). Windows are split chronologically into train/val/test.

Model: flow features -> edge embeddings; hosts start as the mean of their outgoing and incoming flows plus their
fan-out/fan-in counts; layers of local message passing over flows (torch_geometric GINEConv, edge-aware) and
global attention over the hosts of the window (shared_attention); each flow is represented by [source host,
destination host, flow]. Objectives (`model.objective`):

- `reconstruct` (self-supervised): a random share of the flows is hidden behind a mask token; their features and
  their hosts' fan-out/fan-in counts are reconstructed from the host graph as Gaussians (predicted mean and
  variance); the anomaly score of a flow is its negative log-likelihood while hidden, over all targets or
  (`model.anomaly_score: hosts`) over the host counts only. Labels never train it; checkpoints are selected on
  the validation reconstruction error; validation labels only choose the threshold (and chose the score's
  targets in the committed recipe).
- `classify`: attack logits per flow (binary cross-entropy), optionally after `pretrain.epochs` of the masked
  reconstruction on all training windows, and with only `data.label_fraction` of the windows labelled.

Legend: E flows in a window, N hosts, F flow features, D width.
"""

from __future__ import annotations

import hashlib
import math
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
HOST_STATS = 4  # see host_statistics
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
    label_fraction: float = Field(1.0, gt=0, le=1, description="classify: share of training windows whose labels "
                                  "the classifier sees (the rest serve self-supervised pretraining only)")
    train_on: Literal["all", "benign"] = Field("all", description="reconstruct: learn from all training flows "
                                               "(labels unused) or from benign ones only (GraphIDS' setting)")


class FlowModelConfig(StrictModel):
    name: Literal["flowgraph"] = "flowgraph"
    objective: Literal["classify", "reconstruct"] = Field(
        "classify", description="classify: supervised attack logits; reconstruct: self-supervised masked flow "
        "reconstruction, the anomaly score is the reconstruction error (labels only pick the threshold)")
    dim: int = Field(48, ge=8)
    depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    attention: bool = Field(True, description="global attention over the hosts of a window")
    use_hosts: bool = Field(True, description="false: score flows from their own features only (a baseline)")
    mask_ratio: float = Field(0.25, gt=0, le=0.5, description="share of flows hidden per reconstruction step")
    anomaly_score: Literal["all", "hosts"] = Field(
        "all", description="reconstruct: the anomaly score is the reconstruction error of all targets, or of the "
        "two hosts' fan-out/fan-in counts only (training and checkpoint selection use all targets either way)")
    dropout: float = Field(0.1, ge=0, lt=1)


class PretrainConfig(StrictModel):
    """Self-supervised masked flow reconstruction of the encoder before supervised training (classify)."""

    epochs: int = Field(0, ge=0, description="0: no pretraining")
    lr: float = Field(3e-3, gt=0)


class FlowRecipe(Recipe):
    default_model_name = "flowgraph"

    domain: Literal["graphs"] = "graphs"
    task: Literal["intrusion-detection"] = "intrusion-detection"
    data: FlowData = FlowData()
    model: FlowModelConfig = FlowModelConfig()
    pretrain: PretrainConfig = PretrainConfig()


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
    """Host-graph windows; `unlabelled` ones (training only) serve the self-supervised pretraining alone."""

    def __init__(self, windows: list[FlowWindow], *, unlabelled: list[FlowWindow] | None = None) -> None:
        self.windows = windows
        self.unlabelled = unlabelled or []

    @property
    def all_windows(self) -> list[FlowWindow]:
        return self.windows + self.unlabelled

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> FlowWindow:
        return self.windows[i]


def host_statistics(edge_index: Tensor, num_hosts: int) -> Tensor:
    """(N, 4) log1p of flows sent, flows received, distinct peers sent to, distinct peers received from:
    the fan-out and fan-in that mean aggregation alone cannot see."""
    src, dst = edge_index
    pairs = torch.unique(edge_index, dim=1)
    counts = [torch.bincount(i, minlength=num_hosts) for i in (src, dst, pairs[0], pairs[1])]
    return torch.log1p(torch.stack(counts, 1).float())


def collate_windows(items: list[FlowWindow]) -> dict[str, Tensor]:
    """Windows side by side: hosts padded to the largest window (B, N), flows concatenated with offsets."""
    width = max(w.num_hosts for w in items)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    stats = torch.zeros(len(items), width, HOST_STATS)
    edges = []
    for b, w in enumerate(items):
        valid[b, : w.num_hosts] = True
        stats[b, : w.num_hosts] = host_statistics(w.edge_index, w.num_hosts)
        edges.append(w.edge_index + b * width)
    return {"features": torch.cat([w.features for w in items]), "edge_index": torch.cat(edges, 1), "valid": valid,
            "host_stats": stats.view(-1, HOST_STATS), "target": torch.cat([w.labels for w in items])}


def benign_only(window: FlowWindow) -> FlowWindow:
    """The window without its attack flows (hosts kept; the ones only attacks touched become isolated)."""
    keep = window.labels == 0
    return FlowWindow(window.features[keep], window.edge_index[:, keep], window.num_hosts, window.labels[keep])


# --- model ---------------------------------------------------------------------------------------


class FlowGraphModel(nn.Module):
    """A flow-graph encoder with two heads: attack logits (E,) and masked flow reconstruction (E, 2T): mean and
    log-variance of the T = F + 2 * 4 targets (the flow's F features, both hosts' fan-out/fan-in counts).

    Each flow is represented by [source host, destination host, flow] (E, 3D). For reconstruction, hidden flows
    enter the graph as a learned mask token, so only their endpoints and the rest of the window describe them.
    `threshold` is the decision threshold on the output score, chosen on validation for anomaly scores.
    """

    def __init__(self, *, in_features: int, dim: int = 48, depth: int = 2, num_heads: int = 4, attention: bool = True,
                 use_hosts: bool = True, anomaly_score: Literal["all", "hosts"] = "all", dropout: float = 0.1) -> None:
        super().__init__()
        from torch_geometric.nn import GINEConv

        self.use_hosts, self.anomaly_score = use_hosts, anomaly_score
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.register_buffer("threshold", torch.zeros(()))
        self.edge = nn.Sequential(nn.Linear(in_features, dim), nn.GELU(), nn.Linear(dim, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.host_out, self.host_in = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.host_stats = nn.Linear(HOST_STATS, dim)
        self.local = nn.ModuleList(GINEConv(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)),
                                            edge_dim=dim, train_eps=True) for _ in range(depth))
        self.local_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attention = nn.ModuleList(Attention(dim, num_heads, dropout=dropout) for _ in range(depth)) if attention else None
        self.attention_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))
        self.decoder = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 2 * (in_features + 2 * HOST_STATS)))

    def standardise(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std

    def encode(self, batch: dict[str, Tensor], *, hidden: Tensor | None = None) -> Tensor:
        """Flow representations (E, 3D); flows where `hidden` (E,) is true enter as the mask token."""
        from torch_geometric.utils import scatter

        valid, edge_index = batch["valid"], batch["edge_index"]
        b, n = valid.shape
        e = self.edge(self.standardise(batch["features"]))  # (E, D)
        if hidden is not None:
            e = torch.where(hidden[:, None], self.mask_token.to(e.dtype).expand_as(e), e)
        src, dst = edge_index
        # Hosts start as the mean of what they send and what they receive, plus their fan-out and fan-in.
        h = self.host_out(scatter(e, src, 0, dim_size=b * n, reduce="mean")) + \
            self.host_in(scatter(e, dst, 0, dim_size=b * n, reduce="mean")) + self.host_stats(batch["host_stats"])
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
        return torch.cat([h[src], h[dst], e], -1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Attack logits (E,)."""
        return self.head(self.encode(batch))[:, 0]

    def reconstruction_error(self, batch: dict[str, Tensor], hidden: Tensor) -> Tensor:
        """Reconstruction error (E,) of every flow with the `hidden` flows masked: the mean of `target_nll`."""
        return self.target_nll(batch, hidden).mean(-1)

    def target_nll(self, batch: dict[str, Tensor], hidden: Tensor) -> Tensor:
        """(E, T) Gaussian negative log-likelihood (without constants) of each flow's standardised features and
        its two hosts' fan-out and fan-in counts (the last 2 * 4 columns), with the `hidden` flows masked, under
        a predicted mean and variance. The learned variance lets inherently noisy targets (bytes of a failed
        connection) count less than precise ones (a client's fan-out)."""
        mean, log_var = self.decoder(self.encode(batch, hidden=hidden)).float().chunk(2, -1)
        stats = batch["host_stats"]
        src, dst = batch["edge_index"]
        target = torch.cat([self.standardise(batch["features"]), stats[src], stats[dst]], -1)
        log_var = log_var.clamp(-6, 6)
        return 0.5 * ((mean - target).pow(2) * torch.exp(-log_var) + log_var)

    def hidden_nll(self, batch: dict[str, Tensor], *, mask_ratio: float) -> Tensor:
        """(E, T) `target_nll` of each flow while it is hidden: flows are dealt into ceil(1 / mask_ratio) fixed
        groups and each group is hidden in turn, so every value comes from the flow's context alone."""
        rounds = math.ceil(1 / mask_ratio)
        count = batch["features"].shape[0]
        generator = torch.Generator().manual_seed(0)  # the same groups every time: scores are deterministic
        group = (torch.randperm(count, generator=generator) % rounds).to(batch["features"].device)
        nll = None
        for r in range(rounds):
            hidden = group == r
            step = self.target_nll(batch, hidden)
            nll = torch.where(hidden[:, None], step, step.new_zeros(()) if nll is None else nll)
        assert nll is not None
        return nll

    def score_of(self, nll: Tensor) -> Tensor:
        """(E, T) -> (E,) anomaly score: the mean over all targets, or over the host counts only. On the
        synthetic flows the host counts carry the signal (validation PR-AUC 0.88-0.96 for seeds 0-1, against
        0.08-0.15 for the flow features), and averaging in the noisier flow features dilutes it."""
        return (nll[:, -2 * HOST_STATS :] if self.anomaly_score == "hosts" else nll).mean(-1)

    def anomaly_scores(self, batch: dict[str, Tensor], *, mask_ratio: float) -> Tensor:
        """(E,) anomaly score of each flow while it is hidden (see `hidden_nll` and `score_of`)."""
        return self.score_of(self.hidden_nll(batch, mask_ratio=mask_ratio))


def masked_reconstruction_loss(model: FlowGraphModel, batch: dict[str, Tensor], mask_ratio: float) -> Tensor:
    """The self-supervised objective: hide a random `mask_ratio` of the flows, reconstruct their features."""
    count = batch["features"].shape[0]
    hidden = torch.rand(count, device=batch["features"].device) < mask_ratio
    hidden[torch.randint(count, (1,))] = True  # never an empty mask
    return model.reconstruction_error(batch, hidden)[hidden].mean()


def pretrain_encoder(model: FlowGraphModel, splits: Splits, cfg: PretrainConfig, *, mask_ratio: float,
                     batch_size: int, seed: int) -> float:
    """Masked flow reconstruction on the training windows (labels unused); keeps the weights of the epoch with
    the lowest validation reconstruction error and returns that error."""
    from panformer.engine.runlog import progress_bar
    from panformer.engine.trainer import to_device

    device = model.mean.device
    loader = torch.utils.data.DataLoader(WindowDataset(splits.train.all_windows), batch_size=batch_size, shuffle=True, collate_fn=collate_windows,
                                         generator=torch.Generator().manual_seed(seed))
    val_loader = torch.utils.data.DataLoader(splits.val, batch_size=batch_size, collate_fn=collate_windows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    best, best_state = math.inf, None
    with progress_bar(enabled=True) as bar:
        task = bar.add_task("graphs pretrain", total=cfg.epochs * len(loader), status="")
        for epoch in range(cfg.epochs):
            model.train()
            for batch in loader:
                loss = masked_reconstruction_loss(model, to_device(batch, device), mask_ratio)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                loss = loss.detach()
                bar.update(task, advance=1, status=f"epoch {epoch}  reconstruction {loss.item():.4f}")
            model.eval()
            with torch.no_grad():
                errors = [model.hidden_nll(to_device(b, device), mask_ratio=mask_ratio).mean(-1) for b in val_loader]
            val = float(torch.cat(errors).mean())
            if val < best:
                best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.update(task, status=f"epoch {epoch}  val reconstruction {val:.4f} (best {best:.4f})")
    if best_state is not None:
        model.load_state_dict(best_state)
    return best


# --- metrics -------------------------------------------------------------------------------------


class DetectionMetrics(Metrics):
    """Per-flow attack detection: accuracy, macro F1, attack precision/recall/F1, ROC-AUC, PR-AUC.

    Outputs are (scores (E,), the model's threshold buffer); a flow is flagged when its score reaches the
    threshold. With `calibrate` (validation of anomaly scores) the threshold that maximises the attack F1 on
    these flows is written into the buffer, so the checkpoint selected on validation carries it to test."""

    def __init__(self, *, calibrate: bool = False) -> None:
        self.calibrate = calibrate
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.threshold: Tensor | None = None

    def update(self, batch: dict[str, Tensor], outputs: tuple[Tensor, Tensor]) -> None:
        scores, self.threshold = outputs
        self.scores.append(scores.detach().float().cpu())
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
        assert self.threshold is not None
        if self.calibrate:
            self.threshold.fill_(best_f1_threshold(score, label))
        pred = (score >= float(self.threshold)).astype(np.int64)
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


def best_f1_threshold(score: np.ndarray, label: np.ndarray) -> float:
    """The score threshold (flag score >= t) with the best attack F1; without attacks, just above every score."""
    from sklearn.metrics import precision_recall_curve

    if label.max(initial=0) == 0:
        return float(np.nextafter(score.max(), np.inf))
    precision, recall, thresholds = precision_recall_curve(label, score)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    return float(thresholds[int(np.argmax(f1))])


def isolation_forest_scores(splits: Splits, *, host_statistics_too: bool = False, seed: int = 0) -> dict[str, float]:
    """The classic unsupervised baseline: scikit-learn's IsolationForest fitted on the training flows (labels
    unused), threshold chosen on validation, test flows scored. Inputs: the flow features, and with
    `host_statistics_too` also both hosts' fan-out/fan-in counts (the graph seen as tabular features)."""
    from sklearn.ensemble import IsolationForest

    def table(windows: list[FlowWindow]) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for w in windows:
            stats = host_statistics(w.edge_index, w.num_hosts)
            extra = [stats[w.edge_index[0]], stats[w.edge_index[1]]] if host_statistics_too else []
            rows.append(torch.cat([w.features, *extra], 1))
        return torch.cat(rows).numpy(), torch.cat([w.labels for w in windows]).numpy()

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(table(splits.train.all_windows)[0])
    threshold = torch.zeros(())
    scores: dict[str, float] = {}
    for dataset, calibrate in ((splits.val, True), (splits.test, False)):
        x, y = table(dataset.windows)
        metrics = DetectionMetrics(calibrate=calibrate)
        metrics.update({"target": torch.from_numpy(y)}, (torch.from_numpy(-forest.score_samples(x)), threshold))
        scores = metrics.compute()
    return scores


# --- tasks ---------------------------------------------------------------------------------------


class IntrusionDetectionTask(Task):
    """Supervised per-flow attack classification (optionally after self-supervised pretraining)."""

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
        train_set = self._training_windows(recipe, train)
        info = {"task": "intrusion-detection", "objective": recipe.model.objective, "source": source,
                "features": features, "window": data.window,
                "split_windows": {"train": len(train), "val": len(val), "test": len(test)},
                "labelled_train_windows": len(train_set.windows),
                "attack_rate": float(table[LABEL].mean())}
        digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()[:16]
        return Splits(train_set, WindowDataset(val), WindowDataset(test), info=info, fingerprint=digest)

    def _training_windows(self, recipe: FlowRecipe, train: list[FlowWindow]) -> WindowDataset:
        """Labels kept on an evenly spread `label_fraction` of the windows; the rest go to pretraining only."""
        count = max(1, round(recipe.data.label_fraction * len(train)))
        keep = set(np.linspace(0, len(train) - 1, count).round().astype(int).tolist())
        return WindowDataset([w for i, w in enumerate(train) if i in keep],
                             unlabelled=[w for i, w in enumerate(train) if i not in keep])

    def build_model(self, recipe: FlowRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        return FlowGraphModel(in_features=len(info["features"]), dim=cfg.dim, depth=cfg.depth,
                              num_heads=cfg.num_heads, attention=cfg.attention, use_hosts=cfg.use_hosts,
                              anomaly_score=cfg.anomaly_score, dropout=cfg.dropout)

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        x = torch.cat([w.features for w in splits.train.all_windows])
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp(min=1e-3))

    def collate(self, items: list[FlowWindow]) -> dict[str, Tensor]:
        return collate_windows(items)

    def batch_size_of(self, batch: dict[str, Tensor]) -> int:
        return int(batch["target"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        logits = model(batch).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["target"].float())
        return loss, (logits.detach(), model.threshold)

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return DetectionMetrics()

    def scores(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Per-flow output of `predict`: the attack probability."""
        return torch.sigmoid(model(batch).float())

    def score_threshold(self, model: nn.Module) -> float:
        return 0.5

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: FlowRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        """Per flow (file order): `flow, src, dst, <score>, predicted` (1 = attack); the score is the attack
        probability (classify) or the anomaly score (reconstruct)."""
        from panformer.engine.trainer import to_device

        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        table = read_flows(input_path, require_label=False, features=info["features"])
        for column in info["features"]:
            if not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().any():
                raise UserError(f"{input_path}: column {column} must be numeric with no empty values")
        model.eval()
        scores = [self.scores(model, to_device(collate_windows([window]), device)).cpu()
                  for window in windows_of(table, info["features"], info["window"])]
        p = torch.cat(scores).numpy()
        name = "attack_probability" if info.get("objective", "classify") == "classify" else "anomaly_score"
        out = pd.DataFrame({"flow": np.arange(len(table)), "src": table[SRC].astype(str), "dst": table[DST].astype(str),
                            name: p.round(6), "predicted": (p >= self.score_threshold(model)).astype(int)})
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


class PretrainedIntrusionDetectionTask(IntrusionDetectionTask):
    """Classify, after `pretrain.epochs` of masked flow reconstruction on all training windows."""

    def __init__(self, recipe: FlowRecipe) -> None:
        self.recipe = recipe

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        super().fit_statistics(model, splits)
        cfg = self.recipe
        pretrain_encoder(model, splits, cfg.pretrain, mask_ratio=cfg.model.mask_ratio,
                         batch_size=cfg.train.batch_size, seed=cfg.train.seed)


class AnomalyDetectionTask(IntrusionDetectionTask):
    """Self-supervised: masked flow reconstruction, anomaly score = reconstruction error of a hidden flow.

    Labels never train the model; checkpoints are selected on the validation reconstruction error (label-free)
    and validation labels, where present, only choose the score threshold."""

    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, recipe: FlowRecipe) -> None:
        self.mask_ratio = recipe.model.mask_ratio

    def _training_windows(self, recipe: FlowRecipe, train: list[FlowWindow]) -> WindowDataset:
        return WindowDataset([benign_only(w) for w in train] if recipe.data.train_on == "benign" else train)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        if model.training:
            return masked_reconstruction_loss(model, batch, self.mask_ratio), None
        # Checkpoints are selected on the whole reconstruction error (label-free); the score may use a part of it.
        nll = model.hidden_nll(batch, mask_ratio=self.mask_ratio)
        return nll.mean(), (model.score_of(nll), model.threshold)

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return DetectionMetrics(calibrate=True)

    def test_metrics(self, info: dict[str, Any]) -> Metrics:
        return DetectionMetrics()

    def scores(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model.anomaly_scores(batch, mask_ratio=self.mask_ratio)

    def score_threshold(self, model: nn.Module) -> float:
        return float(model.threshold)


def flow_task(recipe: FlowRecipe) -> IntrusionDetectionTask:
    """The task for a flow recipe: anomaly scores, or a classifier (pretrained first when asked)."""
    if recipe.model.objective == "reconstruct":
        return AnomalyDetectionTask(recipe)
    if recipe.pretrain.epochs > 0:
        return PretrainedIntrusionDetectionTask(recipe)
    return IntrusionDetectionTask()
