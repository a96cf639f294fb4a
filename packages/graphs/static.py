"""Static graphs: node classification, graph classification and graph regression with the GPS transformer
(or a torch_geometric baseline), from PyG datasets, synthetic graphs or CSV folders.

Legend: B graphs, N nodes, C classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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
from panformer.engine.metrics import ClassificationMetrics
from panformer.engine.plots import confusion_matrix_png, pyplot, save_png
from panformer.engine.runlog import console
from panformer.graphs.baselines import MessagePassingBaseline
from panformer.graphs.data import (
    EgoGraphDataset,
    Encodings,
    FixedShape,
    GraphItem,
    GraphSource,
    ItemDataset,
    collate,
    encode,
    fingerprint,
    load_source,
    read_csv_folder,
)
from panformer.graphs.gps import GraphTransformer
from panformer.graphs.structure import (
    NeighbourSampler,
    laplacian_pe,
    log_degree,
    node_positions,
    random_walk_pe,
    undirected,
)
from panformer.graphs.synthetic import RawGraph

# Full attention over one graph of more nodes than this needs neighbour sampling (N^2 memory per head).
MAX_FULL_GRAPH_NODES = 2000

# --- recipe --------------------------------------------------------------------------------------


class SamplingConfig(StrictModel):
    """Neighbour-sampled ego graphs per seed node (GraphSAGE style), for graphs too large to attend whole."""

    fanout: list[int] = Field([10, 5], min_length=1, description="neighbours drawn per node at each hop")


class StructuralFeatures(StrictModel):
    """Node inputs computed from the graph alone, used when the nodes have no feature columns (else ignored).

    Node positions and identities only mean something within one graph: they are used for node tasks on a
    graph attended whole (transductive), not for graph tasks or neighbour-sampled graphs."""

    degree: bool = Field(True, description="log(1 + degree) of each node")
    laplacian: int = Field(8, ge=0, description="Laplacian eigenvectors as node coordinates (one graph attended whole)")
    walk_steps: int = Field(8, ge=0, description="random-walk return probabilities (not with neighbour sampling)")
    node_identity: bool = Field(True, description="one-hot node ids: a learned embedding per node in the model's "
                                "input layer (one graph attended whole)")


class StaticData(StrictModel):
    source: str = Field("synthetic:sbm", description="pyg:<Name>, synthetic:<sbm|cycles|triangles> or a folder "
                        "with nodes.csv (id, [features...,] label) and edges.csv (src, dst[, weight]); without "
                        "feature columns the nodes get `structural` features")
    cache_dir: str = Field("runs/data/graphs", description="where pyg datasets are downloaded and cached")
    synthetic_size: int = Field(400, ge=10, description="nodes (sbm) or graphs (cycles, triangles)")
    synthetic_seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    use_dataset_split: bool = Field(True, description="use a dataset's own train/val/test masks when it has them")
    lap_pe: int = Field(8, ge=0, description="Laplacian eigenvectors per node (0: none)")
    walk_steps: int = Field(16, ge=0, description="random-walk return probabilities per node (0: none)")
    max_distance: int = Field(8, ge=0, le=250, description="shortest-path bias buckets (0: no distance bias)")
    sampling: SamplingConfig | None = None
    structural: StructuralFeatures = StructuralFeatures()
    steps_per_epoch: int = Field(10, ge=1, description="full-graph node tasks: optimiser steps per epoch")


class GPSConfig(StrictModel):
    name: Literal["gps"] = "gps"
    dim: int = Field(64, ge=8)
    depth: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    local: Literal["gin", "gcn", "none"] = "gin"
    attention: Literal["full", "sparse", "none"] = "full"
    attention_gate: bool = Field(False, description="scale the attention branch by a learned gate that starts at "
                                 "zero, so each layer starts as its local message passing (helps small graphs)")
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class BaselineConfig(StrictModel):
    """A torch_geometric baseline, for comparison: GCN, GIN, GAT or PyG's own GPSConv (`pyg-gps`)."""

    name: Literal["gcn", "gin", "gat", "pyg-gps"]
    dim: int = Field(64, ge=8)
    depth: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


StaticModelConfig = Annotated[GPSConfig | BaselineConfig, Field(discriminator="name")]
StaticTaskName = Literal["node-classification", "graph-classification", "graph-regression"]


class StaticGraphRecipe(Recipe):
    default_model_name = "gps"

    domain: Literal["graphs"] = "graphs"
    task: StaticTaskName = "node-classification"
    data: StaticData = StaticData()
    model: StaticModelConfig = GPSConfig()


def build_static_model(cfg: GPSConfig | BaselineConfig, info: dict[str, Any]) -> nn.Module:
    out = 1 if info["task"] == "graph-regression" else len(info["classes"])
    if isinstance(cfg, BaselineConfig):
        return MessagePassingBaseline(name=cfg.name, in_features=info["features"], out_features=out,
                                      level=info["level"], dim=cfg.dim, depth=cfg.depth, dropout=cfg.dropout)
    return GraphTransformer(
        in_features=info["features"], out_features=out, level=info["level"], dim=cfg.dim, depth=cfg.depth,
        num_heads=cfg.num_heads, lap_pe=info["lap_pe"], walk_steps=info["walk_steps"],
        max_distance=info["max_distance"], local=cfg.local, attention=cfg.attention,
        attention_gate=cfg.attention_gate, mlp_ratio=cfg.mlp_ratio,
        dropout=cfg.dropout,
    )


# --- metrics -------------------------------------------------------------------------------------


class SelectedClassification(Metrics):
    """Classification metrics over the scored items only; outputs are (logits (M, C), target (M,))."""

    def __init__(self, num_classes: int) -> None:
        self.inner = ClassificationMetrics(num_classes)

    @property
    def confusion(self) -> Tensor:
        return self.inner.confusion

    def update(self, batch: Any, outputs: tuple[Tensor, Tensor]) -> None:
        logits, target = outputs
        self.inner.update({"target": target}, logits)

    def compute(self) -> dict[str, float]:
        return self.inner.compute()


class RegressionMetrics(Metrics):
    """MAE, RMSE and R^2 in the target's own units; outputs are (prediction (B,), target (B,))."""

    def __init__(self) -> None:
        self.pred: list[Tensor] = []
        self.true: list[Tensor] = []

    def update(self, batch: Any, outputs: tuple[Tensor, Tensor]) -> None:
        self.pred.append(outputs[0].detach().float().cpu())
        self.true.append(outputs[1].detach().float().cpu())

    def compute(self) -> dict[str, float]:
        pred, true = torch.cat(self.pred).double(), torch.cat(self.true).double()
        error = pred - true
        variance = float(((true - true.mean()) ** 2).sum())
        return {"mae": float(error.abs().mean()), "rmse": float(error.pow(2).mean().sqrt()),
                "r2": 1 - float(error.pow(2).sum()) / variance if variance > 0 else 0.0}


# --- splits ----------------------------------------------------------------------------------------


def split_indices(count: int, *, val: float, test: float, seed: int, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Random (stratified when labels are given) train/val/test index split; every part non-empty."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(count)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for group in groups:
        group = rng.permutation(group)
        n_test = max(1, round(test * len(group))) if len(group) >= 3 else 0
        n_val = max(1, round(val * len(group))) if len(group) >= 3 else 0
        parts["test"].append(group[:n_test])
        parts["val"].append(group[n_test : n_test + n_val])
        parts["train"].append(group[n_test + n_val :])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    for name, index in out.items():
        if index.size == 0:
            raise UserError(f"the {name} split is empty ({count} items); give more data or larger split fractions")
    return out


def class_targets(values: Any, *, source: str) -> tuple[Tensor, list[str]]:
    """Labels as class indices plus the class names (numbers stay numbers, strings sort as strings)."""
    if values is None or (isinstance(values, list) and any(v is None for v in values)):
        raise UserError(f"--data {source}: labels are missing; give a label for every node or graph")
    if isinstance(values, Tensor):
        values = values.tolist()
    values = [v.item() if isinstance(v, Tensor) else v for v in values]
    series = pd.Series(values)
    if series.isna().any():
        raise UserError(f"--data {source}: some labels are empty; fill them in or drop those rows")
    names = sorted({str(v) for v in series})
    if pd.api.types.is_numeric_dtype(series):
        names = [str(v) for v in sorted(set(series.tolist()))]
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[str(v)] for v in series], dtype=torch.long), names


# --- structural node features ----------------------------------------------------------------------


@dataclass(frozen=True)
class StructurePlan:
    """Which structural features stand in for missing node features (kept in the checkpoint's info, so
    `predict` builds the same ones). node_ids: the training graph's node ids, one identity column each."""

    degree: bool
    laplacian: int
    walk_steps: int
    node_ids: list[str] | None

    @classmethod
    def choose(cls, cfg: StructuralFeatures, *, level: str, sampled: bool, graph: RawGraph) -> StructurePlan:
        one_graph = level == "node" and not sampled  # transductive: positions and identities are meaningful
        return cls(degree=cfg.degree, laplacian=cfg.laplacian if one_graph else 0,
                   walk_steps=0 if sampled else cfg.walk_steps,  # exact walks on a huge graph cost O(N * E)
                   node_ids=list(graph.node_ids) if one_graph and cfg.node_identity else None)

    def describe(self) -> str:
        parts = {"degree": self.degree, f"{self.laplacian} Laplacian eigenvectors": self.laplacian,
                 f"{self.walk_steps} random-walk return probabilities": self.walk_steps,
                 f"node identity ({len(self.node_ids or [])} learned node embeddings)": self.node_ids is not None}
        return ", ".join(name for name, used in parts.items() if used) or "none (a constant input)"

    def features(self, graph: RawGraph) -> Tensor:
        """The structural node features of `graph` (N, F); nodes unknown to `node_ids` get no identity."""
        n, edges = graph.num_nodes, graph.edge_index
        parts = [log_degree(edges, n)] if self.degree else []
        if self.laplacian:
            parts.append(node_positions(edges, n, self.laplacian))
        if self.walk_steps:
            parts.append(random_walk_pe(edges, n, self.walk_steps))
        if self.node_ids is not None:
            column = {node: i for i, node in enumerate(self.node_ids)}
            identity = torch.zeros(n, len(self.node_ids))
            known = [(row, column[node]) for row, node in enumerate(graph.node_ids) if node in column]
            if known:
                identity[tuple(torch.tensor(known).t())] = 1.0
            parts.append(identity)
        return torch.cat(parts, dim=1) if parts else torch.ones(n, 1)


def with_structural_features(graphs: list[RawGraph], plan: StructurePlan) -> list[RawGraph]:
    return [replace(g, x=plan.features(g)) for g in graphs]


# --- the tasks -------------------------------------------------------------------------------------


class StaticGraphTask(Task):
    """Shared by the three static tasks; subclasses set the level and the monitored metric."""

    task_name: ClassVar[str]
    level: ClassVar[str]
    monitor = "accuracy"
    monitor_mode = "max"
    demo_output_name = "predictions.csv"
    # Graph level under train.cuda_graphs: every batch padded to one shape (set when the splits are loaded).
    fixed_shape: FixedShape | None = None

    def encodings(self, recipe: StaticGraphRecipe) -> Encodings:
        uses_bias = not (isinstance(recipe.model, GPSConfig) and recipe.model.attention == "none")
        return Encodings(recipe.data.lap_pe, recipe.data.walk_steps, recipe.data.max_distance if uses_bias else 0)

    def load_splits(self, recipe: StaticGraphRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        loaded = load_source(source, cache_dir=Path(data.cache_dir), synthetic_size=data.synthetic_size,
                             seed=data.synthetic_seed)
        if loaded.level != self.level:
            raise UserError(f"--data {source} holds {loaded.level}-level labels, but the recipe's task is "
                            f"{self.task_name}; pick a {loaded.level}-level recipe or another data source")
        if any(g.num_nodes == 0 for g in loaded.graphs):
            raise UserError(f"--data {source}: a graph has no nodes; an empty graph cannot be used")
        digest = fingerprint(loaded.graphs)
        info: dict[str, Any] = {"task": self.task_name, "level": self.level, "source": source,
                                **{k: v for k, v in vars(self.encodings(recipe)).items()}}
        if loaded.graphs[0].x.shape[1] == 0:  # no feature columns: the graph's structure is all there is
            plan = StructurePlan.choose(data.structural, level=self.level, sampled=data.sampling is not None,
                                        graph=loaded.graphs[0])
            loaded = replace(loaded, graphs=with_structural_features(loaded.graphs, plan))
            info["structural_features"] = asdict(plan)
            console.print(f"graphs: {source} has no node feature columns; structural node features: "
                          f"{plan.describe()}", soft_wrap=True)
        info["features"] = loaded.graphs[0].x.shape[1]
        splits = self._node_splits(recipe, loaded, info) if self.level == "node" else self._graph_splits(recipe, loaded, info)
        return Splits(*splits, info=info, fingerprint=digest)

    # node level: one graph, nodes split into train/val/test
    def _node_splits(self, recipe: StaticGraphRecipe, loaded: GraphSource, info: dict[str, Any]) -> tuple[Dataset, ...]:
        data, graph, enc = recipe.data, loaded.graphs[0], self.encodings(recipe)
        labels, classes = class_targets(graph.y, source=loaded.name)
        info["classes"] = classes
        if loaded.masks is not None and data.use_dataset_split:
            index = {k: torch.nonzero(m).flatten().numpy() for k, m in loaded.masks.items()}
        else:
            index = split_indices(graph.num_nodes, val=data.val_fraction, test=data.test_fraction,
                                  seed=data.split_seed, labels=labels.numpy())
        info["split_sizes"] = {k: int(v.size) for k, v in index.items()}
        if data.sampling is not None:
            info["fanout"] = data.sampling.fanout
            sampler = NeighbourSampler(undirected(graph.edge_index, graph.num_nodes), graph.num_nodes, data.sampling.fanout)
            return tuple(
                EgoGraphDataset(graph, labels, torch.from_numpy(index[k]), sampler, enc, train=k == "train")
                for k in ("train", "val", "test")
            )
        if graph.num_nodes > MAX_FULL_GRAPH_NODES:
            raise UserError(f"--data {loaded.name}: {graph.num_nodes} nodes are too many to attend over at once; "
                            "set data.sampling (e.g. --set data.sampling.fanout=[10,5])")
        whole = encode(graph.x, graph.edge_index, labels, enc)
        datasets = []
        for k in ("train", "val", "test"):
            target = torch.full_like(labels, -1)
            target[index[k]] = labels[index[k]]
            item = GraphItem(**{**vars(whole), "target": target})
            datasets.append(ItemDataset([item], repeat=data.steps_per_epoch if k == "train" else 1))
        return tuple(datasets)

    # graph level: many graphs, split into train/val/test graphs
    def _graph_splits(self, recipe: StaticGraphRecipe, loaded: GraphSource, info: dict[str, Any]) -> tuple[Dataset, ...]:
        data, enc = recipe.data, self.encodings(recipe)
        targets, strata = self._graph_targets(loaded, info)
        index = split_indices(len(loaded.graphs), val=data.val_fraction, test=data.test_fraction,
                              seed=data.split_seed, labels=strata)
        info["split_sizes"] = {k: int(v.size) for k, v in index.items()}
        if self.task_name == "graph-regression":
            train = targets[index["train"]]
            info["target_mean"], info["target_std"] = float(train.mean()), float(train.std().clamp(min=1e-6))
        items = [encode(g.x, g.edge_index, t, enc) for g, t in zip(loaded.graphs, targets, strict=True)]
        if recipe.train.cuda_graphs:  # one batch shape for the captured step (node level: one graph already)
            self.fixed_shape = FixedShape.covering(items, recipe.train.batch_size)
        return tuple(ItemDataset([items[i] for i in index[k]]) for k in ("train", "val", "test"))

    def _graph_targets(self, loaded: GraphSource, info: dict[str, Any]) -> tuple[Tensor, np.ndarray | None]:
        labels, classes = class_targets([g.y for g in loaded.graphs], source=loaded.name)
        info["classes"] = classes
        return labels, labels.numpy()

    def build_model(self, recipe: StaticGraphRecipe, info: dict[str, Any]) -> nn.Module:
        return build_static_model(recipe.model, info)

    def collate(self, items: list[GraphItem]) -> dict[str, Tensor]:
        return collate(items, shape=self.fixed_shape)

    def batch_size_of(self, batch: dict[str, Tensor]) -> int:
        return int((batch["target"] >= 0).sum()) if self.level == "node" else int(batch["target"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        out = model(batch).float()
        target = batch["target"]
        if self.level == "node":
            scored = target >= 0
            out, target = out[scored], target[scored]
        return nn.functional.cross_entropy(out, target), (out.detach(), target)

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return SelectedClassification(len(info["classes"]))

    # --- predict ---------------------------------------------------------------------------------

    def _read_input(self, input_path: Path, info: dict[str, Any]) -> GraphSource:
        if not input_path.is_dir():
            raise UserError(f"--input {input_path}: give a folder holding nodes.csv and edges.csv")
        loaded = read_csv_folder(input_path, require_labels=False)
        if loaded.level != self.level:
            raise UserError(f"--input {input_path}: the model predicts per {self.level}, but the files describe "
                            f"{'many graphs (graph column)' if loaded.level == 'graph' else 'one graph'}")
        width = loaded.graphs[0].x.shape[1]
        if "structural_features" in info:
            if width != 0:
                raise UserError(f"--input {input_path / 'nodes.csv'}: {width} feature column(s), but the model was "
                                "trained without node features (on structural ones); give only id (and label)")
            return replace(loaded, graphs=with_structural_features(
                loaded.graphs, StructurePlan(**info["structural_features"])))
        if width != info["features"]:
            raise UserError(f"--input {input_path / 'nodes.csv'}: {width} feature column(s), but the model was "
                            f"trained on {info['features']}; give the same feature columns")
        return loaded

    def _outputs(self, model: nn.Module, items: list[GraphItem], device: torch.device, batch_size: int) -> list[Tensor]:
        """Graph-level outputs, batch by batch: each (B, C)."""
        from panformer.engine.trainer import to_device

        model.eval()
        outs = []
        for start in range(0, len(items), batch_size):
            batch = to_device(collate(items[start : start + batch_size]), device)
            outs.append(model(batch).float().cpu())
        return outs

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: StaticGraphRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        """Node tasks: `id, predicted, probability` per node; graph tasks: `graph, predicted[, probability]`."""
        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        loaded = self._read_input(input_path, info)
        enc = Encodings(info["lap_pe"], info["walk_steps"], info["max_distance"])
        if self.level == "node":
            graph = loaded.graphs[0]
            scores = self._node_scores(model, graph, info, enc, device, recipe.train.batch_size)
            probs = torch.softmax(scores, -1)
            confidence, predicted = probs.max(-1)
            table = pd.DataFrame({"id": graph.node_ids, "predicted": [info["classes"][i] for i in predicted.tolist()],
                                  "probability": confidence.numpy().round(6)})
        else:
            items = [encode(g.x, g.edge_index, torch.tensor(0), enc) for g in loaded.graphs]
            out = torch.cat(self._outputs(model, items, device, recipe.train.batch_size))
            table = self._graph_table(out, info)
            table.insert(0, "graph", loaded.graph_names)
        written = [output_path]
        with atomic_path(output_path) as tmp:
            table.to_csv(tmp, index=False)
        if plot and self.level == "node":
            written.append(plot_node_predictions(loaded.graphs[0], predicted, info["classes"],
                                                 output_path.with_suffix(".png")))
        return written

    def _node_scores(self, model: nn.Module, graph: RawGraph, info: dict[str, Any], enc: Encodings,
                     device: torch.device, batch_size: int) -> Tensor:
        from panformer.engine.trainer import to_device

        labels = torch.zeros(graph.num_nodes, dtype=torch.long)
        if "fanout" not in info:
            if graph.num_nodes > MAX_FULL_GRAPH_NODES:
                raise UserError(f"--input: {graph.num_nodes} nodes are too many for a model trained without sampling")
            batch = to_device(collate([encode(graph.x, graph.edge_index, labels, enc)]), device)
            return model(batch).float().cpu()[0]
        sampler = NeighbourSampler(undirected(graph.edge_index, graph.num_nodes), graph.num_nodes, info["fanout"])
        egos = EgoGraphDataset(graph, labels, torch.arange(graph.num_nodes), sampler, enc, train=False)
        scores = []
        for start in range(0, len(egos), batch_size):
            batch = to_device(collate([egos[i] for i in range(start, min(len(egos), start + batch_size))]), device)
            scores.append(model(batch).float().cpu()[:, 0])  # the seed is each ego graph's first node
        return torch.cat(scores)

    def _graph_table(self, out: Tensor, info: dict[str, Any]) -> pd.DataFrame:
        probs = torch.softmax(out, -1)
        confidence, predicted = probs.max(-1)
        return pd.DataFrame({"predicted": [info["classes"][i] for i in predicted.tolist()],
                             "probability": confidence.numpy().round(6)})

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path:
        from panformer.engine.trainer import evaluate_model

        metrics = SelectedClassification(len(info["classes"]))
        evaluate_model(self, model, dataset, info, batch_size=batch_size, device=device, metrics=metrics)
        return confusion_matrix_png(metrics.confusion.numpy(), info["classes"], path)

    def demo_input(self, recipe: StaticGraphRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The data as a CSV folder (node tasks: the whole graph; graph tasks: the test graphs)."""
        data = recipe.data
        loaded = load_source(info["source"], cache_dir=Path(data.cache_dir), synthetic_size=data.synthetic_size,
                             seed=data.synthetic_seed)
        graphs = loaded.graphs
        if self.level == "graph":
            _, index = self._demo_graph_indices(recipe, loaded, info)
            graphs = [graphs[i] for i in index]
        return write_csv_folder(graphs, workdir / "input", many=self.level == "graph")

    def _demo_graph_indices(self, recipe: StaticGraphRecipe, loaded: GraphSource, info: dict[str, Any]):
        targets, strata = self._graph_targets(loaded, dict(info))
        index = split_indices(len(loaded.graphs), val=recipe.data.val_fraction, test=recipe.data.test_fraction,
                              seed=recipe.data.split_seed, labels=strata)
        return targets, index["test"]


class NodeClassificationTask(StaticGraphTask):
    task_name = "node-classification"
    level = "node"


class GraphClassificationTask(StaticGraphTask):
    task_name = "graph-classification"
    level = "graph"


class GraphRegressionTask(StaticGraphTask):
    task_name = "graph-regression"
    level = "graph"
    monitor = "mae"
    monitor_mode = "min"

    def _graph_targets(self, loaded: GraphSource, info: dict[str, Any]) -> tuple[Tensor, np.ndarray | None]:
        try:
            values = torch.tensor([float(g.y) for g in loaded.graphs], dtype=torch.float32)
        except (TypeError, ValueError):
            raise UserError(f"--data {loaded.name}: regression needs one numeric label per graph") from None
        if not torch.isfinite(values).all():
            raise UserError(f"--data {loaded.name}: some graph labels are missing or not finite")
        return values, None

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        mean, std = model.target_mean, model.target_std
        pred = model(batch).float()[:, 0]
        target = batch["target"].float()
        return nn.functional.mse_loss(pred, (target - mean) / std), (pred.detach() * std + mean, target)

    def build_model(self, recipe: StaticGraphRecipe, info: dict[str, Any]) -> nn.Module:
        model = build_static_model(recipe.model, info)
        # Fitted on the training split; buffers so they travel with the weights.
        model.register_buffer("target_mean", torch.tensor(info["target_mean"]))
        model.register_buffer("target_std", torch.tensor(info["target_std"]))
        return model

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return RegressionMetrics()

    def _graph_table(self, out: Tensor, info: dict[str, Any]) -> pd.DataFrame:
        values = out[:, 0] * info["target_std"] + info["target_mean"]
        return pd.DataFrame({"predicted": values.numpy().round(6)})

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path:
        from panformer.engine.trainer import evaluate_model

        metrics = RegressionMetrics()
        scores = evaluate_model(self, model, dataset, info, batch_size=batch_size, device=device, metrics=metrics)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 5))
        true, pred = torch.cat(metrics.true).numpy(), torch.cat(metrics.pred).numpy()
        ax.scatter(true, pred, s=10, alpha=0.6)
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(f"test MAE {scores['mae']:.3f}, R² {scores['r2']:.3f}")
        fig.tight_layout()
        return save_png(fig, path)


# --- files -----------------------------------------------------------------------------------------


def write_csv_folder(graphs: list[RawGraph], folder: Path, *, many: bool) -> Path:
    """Graphs as nodes.csv + edges.csv (+ graph column when `many`), written atomically as one folder."""
    nodes, edges = [], []
    for g, graph in enumerate(graphs):
        x = pd.DataFrame(graph.x.numpy(), columns=[f"f{i}" for i in range(graph.x.shape[1])])
        x.insert(0, "id", graph.node_ids)
        e = undirected(graph.edge_index, graph.num_nodes)
        e = e[:, e[0] < e[1]]
        frame = pd.DataFrame({"src": [graph.node_ids[i] for i in e[0].tolist()],
                              "dst": [graph.node_ids[i] for i in e[1].tolist()]})
        if many:
            x.insert(0, "graph", f"g{g}")
            frame.insert(0, "graph", f"g{g}")
        nodes.append(x)
        edges.append(frame)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        pd.concat(nodes).to_csv(tmp / "nodes.csv", index=False)
        pd.concat(edges).to_csv(tmp / "edges.csv", index=False)
    return folder


def plot_node_predictions(graph: RawGraph, predicted: Tensor, classes: list[str], path: Path) -> Path:
    """The graph drawn on its two first Laplacian eigenvectors (a spectral layout), nodes coloured by class."""
    plt = pyplot()
    n = graph.num_nodes
    position = laplacian_pe(graph.edge_index, n, 2).numpy()
    e = undirected(graph.edge_index, n)
    fig, ax = plt.subplots(figsize=(6, 6))
    if e.shape[1] <= 20000:
        segments = np.stack([position[e[0].numpy()], position[e[1].numpy()]], axis=1)
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segments, colors="lightgrey", linewidths=0.5, zorder=1))
    scatter = ax.scatter(position[:, 0], position[:, 1], c=predicted.numpy(), cmap="tab10", s=max(4, 400 / math.sqrt(n)),
                         zorder=2, vmin=0, vmax=max(9, len(classes) - 1))
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=scatter.cmap(scatter.norm(i)), label=c)
               for i, c in enumerate(classes[:10])]
    ax.legend(handles=handles, title="predicted", loc="best", fontsize=8)
    ax.set_title(f"node predictions ({n} nodes, spectral layout)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return save_png(fig, path)
