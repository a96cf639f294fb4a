"""Dynamic graphs: Todyformer-style link prediction on continuous-time temporal edges.

Data: a temporal edge CSV (`src, dst, t[, feature columns]`, timestamps non-decreasing) or `synthetic:temporal`
(a seeded generator with communities and repeated, rotating partners). Events are split chronologically
(train, then validation, then test); a query at time t only ever sees events strictly before t.

Model (after Todyformer, Biparva et al. 2024): each endpoint's K most recent interactions are tokens
(neighbour id, time since, edge features, "is the other endpoint" flag), cut chronologically into patches;
a GIN (torch_geometric) runs message passing inside each patch graph (the endpoint linked to its patch's
neighbours, repeated neighbours linked to each other): structure-aware tokenisation. The patch summaries of
both endpoints then go through global temporal attention (shared_attention) and a [CLS] token scores the link.

Evaluation is TGB-style: each positive is ranked against 20 negatives (half historical: past partners of the
source, half random), reported as MRR and Hits@10, next to a recency (most-recent-neighbour) and a
popularity heuristic scored on the very same candidates.

Legend: B queries, C candidates per query (1 positive + negatives), K history length, p patch size,
P = K / p patches, D width, E events, N nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
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

# --- recipe --------------------------------------------------------------------------------------


class TemporalData(StrictModel):
    source: str = Field("synthetic:temporal", description="synthetic:temporal or a CSV with src, dst, t[, features]")
    synthetic_nodes: int = Field(150, ge=10)
    synthetic_events: int = Field(5000, ge=100)
    synthetic_seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1, description="the next events after training, chronologically")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="the last events, chronologically")
    history: int = Field(32, ge=2, description="K: most recent interactions per endpoint")
    patch: int = Field(8, ge=1, description="p: interactions per patch (K must be a multiple)")
    train_negatives: int = Field(5, ge=1, description="random negatives per positive in training")
    eval_negatives: int = Field(20, ge=2, description="negatives per positive in evaluation (half historical)")
    top_k: int = Field(10, ge=1, description="predict: destinations listed per query")


class TodyformerConfig(StrictModel):
    name: Literal["todyformer"] = "todyformer"
    dim: int = Field(64, ge=8)
    local_layers: int = Field(1, ge=1, description="GIN layers inside each patch")
    depth: int = Field(2, ge=1, description="global temporal attention layers")
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class TemporalLinkRecipe(Recipe):
    default_model_name = "todyformer"

    domain: Literal["graphs"] = "graphs"
    task: Literal["link-prediction"] = "link-prediction"
    data: TemporalData = TemporalData()
    model: TodyformerConfig = TodyformerConfig()


# --- events --------------------------------------------------------------------------------------


@dataclass
class Events:
    """Temporal edges sorted by time: src, dst (E,) node indices, t (E,) float, features (E, Fe)."""

    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    features: np.ndarray
    nodes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.t)


def synthetic_temporal(*, nodes: int = 150, events: int = 5000, communities: int = 5, seed: int = 0) -> Events:
    """SYNTHETIC interactions with real structure: each node has 3-4 favourite partners in its community and
    contacts them in a fixed rotation (70%), else a random community member (20%) or anyone (10%). So the
    most recent partner is usually NOT the next one, and a recency heuristic is beatable from the history."""
    rng = np.random.default_rng(seed)
    community = rng.integers(0, communities, size=nodes)
    members = [np.flatnonzero(community == c) for c in range(communities)]
    partners = []
    for u in range(nodes):
        pool = members[community[u]][members[community[u]] != u]
        pool = pool if pool.size else np.array([(u + 1) % nodes])
        partners.append(rng.choice(pool, size=min(pool.size, int(rng.integers(3, 5))), replace=False))
    turn = np.zeros(nodes, dtype=np.int64)
    activity = rng.pareto(1.5, size=nodes) + 1
    activity /= activity.sum()
    src = rng.choice(nodes, size=events, p=activity)
    dst = np.empty(events, dtype=np.int64)
    for i, u in enumerate(src):
        r = rng.uniform()
        if r < 0.7:
            dst[i] = partners[u][turn[u] % len(partners[u])]
            turn[u] += 1
        elif r < 0.9:
            dst[i] = rng.choice(members[community[u]])
        else:
            dst[i] = rng.integers(0, nodes)
    t = np.cumsum(rng.exponential(1.0, size=events)).round(3)
    features = rng.normal(size=(events, 1)).astype(np.float32)
    return Events(src, dst, t, features, [str(i) for i in range(nodes)], "synthetic:temporal")


def read_temporal_csv(path: Path, *, nodes: list[str] | None = None, require_dst: bool = True,
                      feature_count: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Validated temporal edges (or predict queries): one-line errors for every kind of bad input."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a temporal edge CSV (src, dst, t[, features])")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({type(err).__name__}); fix the file") from None
    required = ["src", "dst", "t"] if require_dst else ["src", "t"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    if table.empty:
        raise UserError(f"{path}: no rows; an empty graph cannot be used")
    times = pd.to_numeric(table["t"], errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0]) + 2
        raise UserError(f"{path}: missing or non-numeric timestamp in line {row}; every event needs a number t")
    if require_dst and (np.diff(times.to_numpy()) < 0).any():
        row = int(np.flatnonzero(np.diff(times.to_numpy()) < 0)[0]) + 3
        raise UserError(f"{path}: timestamps go backwards at line {row}; sort the events by t")
    features = [c for c in table.columns if c not in ("src", "dst", "t")]
    if feature_count is not None and require_dst and len(features) != feature_count:
        raise UserError(f"{path}: {len(features)} feature column(s), but the model was trained on {feature_count}")
    for column in features:
        if not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().any():
            raise UserError(f"{path}: feature column '{column}' must be numeric with no empty values")
    table = table.assign(src=table["src"].astype(str), t=times.astype(float))
    if "dst" in table.columns:
        table = table.assign(dst=table["dst"].astype(str))
    if nodes is not None:
        known = set(nodes)
        ends = set(table["src"]) | (set(table["dst"]) if "dst" in table.columns else set())
        unknown = sorted(ends - known)
        if unknown:
            raise UserError(f"{path}: {len(unknown)} node(s) never seen in the training data (e.g. '{unknown[0]}')")
    return table, features


TGB_ROOT = Path("runs/data/graphs/tgb")


def tgb_events(name: str, *, root: Path = TGB_ROOT) -> Events:
    """A Temporal Graph Benchmark link-prediction dataset (`tgb:tgbl-wiki`, ...) through the `py-tgb`
    package, which downloads it into `root` once (online). Its edges, times and edge features become our
    Events; the chronological split and the sampled negatives are then ours, as for any temporal CSV."""
    try:
        from tgb.linkproppred.dataset import LinkPropPredDataset
    except ImportError:
        raise UserError(f"--data tgb:{name} needs the py-tgb package: pip install py-tgb") from None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # py-tgb prints its progress
            dataset = LinkPropPredDataset(name=name, root=str(root), preprocess=True)
        full = dataset.full_data
    except Exception as err:  # offline (requests), an unknown name, a broken download: all say why
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"--data tgb:{name}: py-tgb could not provide it ({reason}); it downloads once into "
                        f"{root} when online") from None
    order = np.argsort(np.asarray(full["timestamps"]), kind="stable")
    src, dst = np.asarray(full["sources"])[order], np.asarray(full["destinations"])[order]
    ids = np.unique(np.concatenate([src, dst]))
    features = full.get("edge_feat")
    features = (np.zeros((len(src), 0), np.float32) if features is None
                else np.asarray(features, np.float32).reshape(len(src), -1)[order])
    return Events(np.searchsorted(ids, src).astype(np.int64), np.searchsorted(ids, dst).astype(np.int64),
                  np.asarray(full["timestamps"], np.float64)[order], features, [str(i) for i in ids], f"tgb:{name}")


def load_events(source: str, data: TemporalData) -> Events:
    if source.startswith("tgb:"):
        return tgb_events(source.removeprefix("tgb:"))
    if source == "synthetic:temporal":
        return synthetic_temporal(nodes=data.synthetic_nodes, events=data.synthetic_events, seed=data.synthetic_seed)
    if source.startswith("synthetic:"):
        raise UserError(f"--data {source}: the link-prediction task's synthetic set is synthetic:temporal")
    path = Path(source)
    if path.suffix.lower() != ".csv" and not path.is_file():
        raise UserError(f"--data {source}: give synthetic:temporal, tgb:<name> or a temporal edge CSV (src, dst, t[, features])")
    table, features = read_temporal_csv(path)
    nodes = sorted(set(table["src"]) | set(table["dst"]))
    index = {n: i for i, n in enumerate(nodes)}
    feats = table[features].to_numpy(np.float32) if features else np.zeros((len(table), 0), np.float32)
    return Events(table["src"].map(index).to_numpy(np.int64), table["dst"].map(index).to_numpy(np.int64),
                  table["t"].to_numpy(np.float64), feats, nodes, source)


class History:
    """Each node's interactions in time order (both directions), to look up its K latest before a time t."""

    def __init__(self, events: Events, *, upto: int | None = None) -> None:
        upto = len(events) if upto is None else upto
        node = np.concatenate([events.src[:upto], events.dst[:upto]])
        other = np.concatenate([events.dst[:upto], events.src[:upto]])
        eid = np.concatenate([np.arange(upto), np.arange(upto)])
        order = np.lexsort((eid, node))  # by node, then by event (= by time)
        self.other, self.eid = other[order], eid[order]
        self.times = events.t[:upto][self.eid]
        self.ptr = np.zeros(len(events.nodes) + 1, dtype=np.int64)
        np.cumsum(np.bincount(node, minlength=len(events.nodes)), out=self.ptr[1:])

    def before(self, node: int, t: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last k interactions of `node` strictly before t: (neighbours, times, event ids), oldest first."""
        start, stop = self.ptr[node], self.ptr[node + 1]
        end = start + np.searchsorted(self.times[start:stop], t, side="left")
        begin = max(start, end - k)
        return self.other[begin:end], self.times[begin:end], self.eid[begin:end]


class LinkQueries(Dataset):
    """Link-prediction queries: the positive event `i` (u, v, t) plus negatives, with both endpoints' histories.

    Negatives are half the source's past partners (TGB's historical negatives), half random nodes; training
    draws fresh ones each time, evaluation a fixed set per query (seeded by the event index).
    """

    def __init__(self, events: Events, history: History, indices: np.ndarray, *, k: int, negatives: int,
                 train: bool, time_scale: float) -> None:
        self.events, self.history, self.indices = events, history, indices
        self.k, self.negatives, self.train, self.time_scale = k, negatives, train, time_scale
        self.num_nodes = len(events.nodes)

    def __len__(self) -> int:
        return len(self.indices)

    def candidates(self, i: int) -> np.ndarray:
        """[positive, historical negatives (past partners of u), random negatives]."""
        u, v, t = self.events.src[i], self.events.dst[i], self.events.t[i]
        seed = int(torch.randint(0, 2**31 - 1, ())) if self.train else i
        rng = np.random.default_rng(seed)
        past = np.unique(self.history.before(u, t, 10**9)[0])
        past = past[past != v]
        historical = rng.choice(past, size=min(past.size, self.negatives // 2), replace=False)
        need = self.negatives - historical.size
        if self.train:  # cheap: may repeat or hit a historical one
            random = rng.integers(0, self.num_nodes, size=need)
            random = np.where(random == v, (random + 1) % self.num_nodes, random)
        else:
            pool = np.setdiff1d(np.arange(self.num_nodes), np.concatenate([historical, [v]]))
            random = rng.choice(pool, size=need, replace=pool.size < need)
        return np.concatenate([[v], historical, random]).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = int(self.indices[index])
        return query_item(self.events, self.history, int(self.events.src[i]), self.candidates(i),
                          float(self.events.t[i]), k=self.k, time_scale=self.time_scale)


def query_item(events: Events, history: History, u: int, candidates: np.ndarray, t: float, *, k: int,
               time_scale: float) -> dict[str, Tensor]:
    """Tensors for one query: u's history (K,), each candidate's history (C, K), heuristic features (C,)."""
    pad = len(events.nodes)  # the padding node id
    feats = events.features.shape[1]

    def side(node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        other, times, eid = history.before(node, t, k)
        nbr = np.full(k, pad, dtype=np.int64)
        dt = np.zeros(k, dtype=np.float32)
        feat = np.zeros((k, feats), dtype=np.float32)
        n = len(other)
        if n:
            nbr[k - n :], dt[k - n :] = other, (t - times) / time_scale
            feat[k - n :] = events.features[eid]
        return nbr, dt, feat

    u_nbr, u_dt, u_feat = side(u)
    sides = [side(int(c)) for c in candidates]
    all_u_partners, all_u_times, _ = history.before(u, t, 10**9)
    last_seen = np.full(len(candidates), np.inf, dtype=np.float32)
    for j, c in enumerate(candidates):
        hits = all_u_times[all_u_partners == c]
        if hits.size:
            last_seen[j] = (t - hits[-1]) / time_scale
    degree = np.array([history.before(int(c), t, 10**9)[0].size for c in candidates], dtype=np.float32)
    return {
        "u": torch.tensor(u), "cand": torch.from_numpy(candidates.astype(np.int64)),
        "u_nbr": torch.from_numpy(u_nbr), "u_dt": torch.from_numpy(u_dt), "u_feat": torch.from_numpy(u_feat),
        "v_nbr": torch.from_numpy(np.stack([s[0] for s in sides])), "v_dt": torch.from_numpy(np.stack([s[1] for s in sides])),
        "v_feat": torch.from_numpy(np.stack([s[2] for s in sides])),
        "last_seen": torch.from_numpy(last_seen), "degree": torch.from_numpy(degree),
    }


# --- the model -------------------------------------------------------------------------------------


class TimeEncoding(nn.Module):
    """TGAT's functional time encoding: cos(w * dt + b), frequencies spread geometrically."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, dim)
        with torch.no_grad():
            self.linear.weight.copy_(1.0 / 10 ** torch.linspace(-2, 3, dim)[:, None])
            self.linear.bias.zero_()

    def forward(self, dt: Tensor) -> Tensor:
        return torch.cos(self.linear(dt[..., None]))


class Todyformer(nn.Module):
    """Scores candidate links: batch (see `query_item`, stacked) -> logits (B, C)."""

    def __init__(self, *, num_nodes: int, edge_features: int, history: int, patch: int, dim: int = 64,
                 local_layers: int = 1, depth: int = 2, num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        from torch_geometric.nn import GINConv

        if history % patch:
            raise UserError(f"data.history {history} must be a multiple of data.patch {patch}")
        self.k, self.p, self.pad = history, patch, num_nodes
        self.node = nn.Embedding(num_nodes + 1, dim, padding_idx=num_nodes)
        self.time = TimeEncoding(dim)
        self.edge = nn.Linear(edge_features, dim) if edge_features else None
        self.flag = nn.Embedding(2, dim)  # token's neighbour is the other endpoint of the link
        self.local = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)), train_eps=True)
            for _ in range(local_layers)
        )
        self.local_norm = nn.LayerNorm(dim)
        self.side = nn.Embedding(2, dim)
        self.patch_position = nn.Embedding(2 * (history // patch), dim)
        self.cls = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "attention": Attention(dim, num_heads, dropout=dropout),
            "norm2": nn.LayerNorm(dim),
            "ffn": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)),
        }) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)

    def tokens(self, nbr: Tensor, dt: Tensor, feat: Tensor, other: Tensor) -> Tensor:
        """Interaction tokens (..., K, D): neighbour, time since, edge features, is-the-other-endpoint."""
        x = self.node(nbr) + self.time(dt) + self.flag((nbr == other[..., None]).long())
        if self.edge is not None:
            x = x + self.edge(feat)
        return x * (nbr != self.pad)[..., None]

    def patch_summaries(self, center: Tensor, nbr: Tensor, tokens: Tensor) -> Tensor:
        """Local message passing inside each patch graph. center (S,), nbr (S, K), tokens (S, K, D) -> (S, P, D).

        Patch graph: the endpoint (node 0) linked both ways to each real interaction token, and tokens with
        the same neighbour linked to each other (repeated interactions)."""
        s, k = nbr.shape
        p, d = self.p, tokens.shape[-1]
        n_patches = k // p
        nbr = nbr.reshape(s * n_patches, p)
        nodes = torch.cat([self.node(center).repeat_interleave(n_patches, 0)[:, None], tokens.reshape(-1, p, d)], 1)
        real = nbr != self.pad  # (S*P, p)
        graph, slot = torch.nonzero(real, as_tuple=True)
        hub, leaf = graph * (p + 1), graph * (p + 1) + slot + 1
        same = (nbr[:, :, None] == nbr[:, None, :]) & real[:, :, None] & real[:, None, :]
        same &= ~torch.eye(p, dtype=torch.bool, device=nbr.device)
        g2, a, b = torch.nonzero(same, as_tuple=True)
        src = torch.cat([hub, leaf, g2 * (p + 1) + a + 1])
        dst = torch.cat([leaf, hub, g2 * (p + 1) + b + 1])
        h = nodes.reshape(-1, d)
        edge_index = torch.stack([src, dst])
        for conv in self.local:
            h = h + conv(h, edge_index)
        return self.local_norm(h.view(s * n_patches, p + 1, d)[:, 0]).view(s, n_patches, d)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        u, cand = batch["u"], batch["cand"]  # (B,), (B, C)
        bsz, c = cand.shape
        # u's side is the same for every candidate except its "is the candidate" flags.
        u_nbr = batch["u_nbr"][:, None].expand(-1, c, -1)
        u_tok = self.tokens(u_nbr, batch["u_dt"][:, None].expand(-1, c, -1),
                            batch["u_feat"][:, None].expand(-1, c, -1, -1), cand)
        v_tok = self.tokens(batch["v_nbr"], batch["v_dt"], batch["v_feat"], u[:, None].expand(-1, c))
        u_patch = self.patch_summaries(u[:, None].expand(-1, c).reshape(-1), u_nbr.reshape(bsz * c, -1),
                                       u_tok.reshape(bsz * c, self.k, -1))
        v_patch = self.patch_summaries(cand.reshape(-1), batch["v_nbr"].reshape(bsz * c, -1),
                                       v_tok.reshape(bsz * c, self.k, -1))
        n_patches = u_patch.shape[1]
        sides = torch.arange(2, device=cand.device).repeat_interleave(n_patches)
        seq = torch.cat([u_patch, v_patch], 1) + self.side(sides) + self.patch_position.weight  # (B*C, 2P, D)
        seq = torch.cat([self.cls.expand(seq.shape[0], 1, -1), seq], 1)
        # Patches with no interaction at all are padding (the [CLS] token is always a valid key).
        real = torch.cat([batch["u_nbr"][:, None].expand(-1, c, -1).reshape(bsz * c, n_patches, self.p),
                          batch["v_nbr"].reshape(bsz * c, n_patches, self.p)], 1)
        valid = torch.cat([torch.ones(bsz * c, 1, dtype=torch.bool, device=cand.device),
                           (real != self.pad).any(-1)], 1)
        for block in self.blocks:
            seq = seq + block["attention"](block["norm1"](seq), key_padding_mask=valid)
            seq = seq + block["ffn"](block["norm2"](seq))
        return self.score(self.norm(seq[:, 0])).view(bsz, c)


# --- metrics -------------------------------------------------------------------------------------


def reciprocal_ranks(scores: Tensor) -> Tensor:
    """scores (B, C) with the positive in column 0 -> 1 / rank (B,), ties counted half (average rank)."""
    pos = scores[:, :1]
    better = (scores[:, 1:] > pos).sum(1).float()
    ties = (scores[:, 1:] == pos).sum(1).float()
    return 1.0 / (1.0 + better + 0.5 * ties)


class LinkMetrics(Metrics):
    """MRR and Hits@10 of the model, and MRR of the recency and popularity heuristics on the same candidates."""

    def __init__(self) -> None:
        self.rr: list[Tensor] = []
        self.hits: list[Tensor] = []
        self.recency: list[Tensor] = []
        self.popularity: list[Tensor] = []

    def update(self, batch: dict[str, Tensor], outputs: Tensor) -> None:
        scores = outputs.detach().float().cpu()
        rr = reciprocal_ranks(scores)
        self.rr.append(rr)
        self.hits.append((rr >= 0.1).float())  # rank <= 10 (ties counted half)
        self.recency.append(reciprocal_ranks(-batch["last_seen"].cpu()))
        self.popularity.append(reciprocal_ranks(batch["degree"].cpu()))

    def compute(self) -> dict[str, float]:
        def mean(parts: list[Tensor]) -> float:
            return float(torch.cat(parts).mean())

        return {"mrr": mean(self.rr), "hits10": mean(self.hits), "mrr_recency": mean(self.recency),
                "mrr_popularity": mean(self.popularity)}


# --- the task --------------------------------------------------------------------------------------


def link_collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class LinkPredictionTask(Task):
    monitor = "mrr"
    monitor_mode = "max"

    def load_splits(self, recipe: TemporalLinkRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        events = load_events(source, data)
        n = len(events)
        n_test, n_val = max(1, round(data.test_fraction * n)), max(1, round(data.val_fraction * n))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise UserError(f"--data {source}: {n} events are too few for a train/val/test split")
        history = History(events)
        gaps = np.diff(events.t[:n_train])
        time_scale = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1.0
        k = data.history

        def queries(index: np.ndarray, train: bool) -> LinkQueries:
            return LinkQueries(events, history, index, k=k, time_scale=time_scale, train=train,
                               negatives=data.train_negatives if train else data.eval_negatives)

        index = np.arange(n)
        info = {"task": "link-prediction", "source": source, "nodes": events.nodes,
                "edge_features": int(events.features.shape[1]), "time_scale": time_scale, "history": k,
                "patch": data.patch, "split_sizes": {"train": n_train, "val": n_val, "test": n_test},
                "split_times": [float(events.t[n_train]), float(events.t[n_train + n_val])]}
        digest = hashlib.sha256(events.src.tobytes() + events.dst.tobytes() + events.t.tobytes()).hexdigest()[:16]
        return Splits(queries(index[:n_train], True), queries(index[n_train : n_train + n_val], False),
                      queries(index[n_train + n_val :], False), info=info, fingerprint=digest)

    def build_model(self, recipe: TemporalLinkRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        return Todyformer(num_nodes=len(info["nodes"]), edge_features=info["edge_features"], history=info["history"],
                          patch=info["patch"], dim=cfg.dim, local_layers=cfg.local_layers, depth=cfg.depth,
                          num_heads=cfg.num_heads, dropout=cfg.dropout)

    def collate(self, items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return link_collate(items)

    def batch_size_of(self, batch: dict[str, Tensor]) -> int:
        return int(batch["u"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        scores = model(batch).float()
        # Softmax over the candidates, the positive in column 0.
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return nn.functional.cross_entropy(scores, target), scores.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return LinkMetrics()

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: TemporalLinkRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        """Queries CSV (`src, t`): the top-k most likely destinations of each, from the history before t.

        Rows `src, t, rank, dst, score`; the history is the data the model was trained on."""
        from panformer.engine.trainer import to_device

        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        queries, _ = read_temporal_csv(input_path, nodes=info["nodes"], require_dst=False)
        events = load_events(info["source"], recipe.data)
        if events.nodes != info["nodes"]:
            raise UserError(f"the training data {info['source']} changed since training; retrain or restore it")
        history = History(events)
        index = {n: i for i, n in enumerate(info["nodes"])}
        everyone = np.arange(len(info["nodes"]))
        k = min(recipe.data.top_k, len(everyone))
        model.eval()
        rows = []
        for src, t in zip(queries["src"], queries["t"], strict=True):
            u = index[src]
            others = everyone[everyone != u]
            scores = []
            for start in range(0, len(others), 256):
                item = query_item(events, history, u, others[start : start + 256], float(t), k=info["history"],
                                  time_scale=info["time_scale"])
                scores.append(model(to_device(link_collate([item]), device)).float().cpu()[0])
            score = torch.cat(scores)
            top = score.topk(k)
            for rank, (value, j) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
                rows.append({"src": src, "t": t, "rank": rank, "dst": info["nodes"][others[j]],
                             "score": round(value, 5)})
        with atomic_path(output_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        return [output_path]

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path:
        """Where the true destination ranks among the candidates: the model next to the heuristics."""
        from panformer.engine.plots import pyplot, save_png
        from panformer.engine.trainer import evaluate_model

        metrics = LinkMetrics()
        evaluate_model(self, model, dataset, info, batch_size=batch_size, device=device, metrics=metrics)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, parts in (("model", metrics.rr), ("recency", metrics.recency), ("popularity", metrics.popularity)):
            rank = (1.0 / torch.cat(parts)).numpy()
            ax.hist(rank, bins=np.arange(0.5, rank.max() + 1.5), histtype="step", linewidth=1.5,
                    label=f"{name} (MRR {float(torch.cat(parts).mean()):.3f})")
        ax.set_xlabel("rank of the true destination (1 = best)")
        ax.set_ylabel("test queries")
        ax.legend()
        fig.tight_layout()
        return save_png(fig, path)

    def demo_input(self, recipe: TemporalLinkRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """Five test-period queries (`src, t`)."""
        events = load_events(info["source"], recipe.data)
        start = info["split_sizes"]["train"] + info["split_sizes"]["val"]
        rows = pd.DataFrame({"src": [events.nodes[i] for i in events.src[start : start + 5]],
                             "t": events.t[start : start + 5]})
        path = workdir / "queries.csv"
        with atomic_path(path) as tmp:
            rows.to_csv(tmp, index=False)
        return path
