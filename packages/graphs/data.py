"""Static graph data: sources (`pyg:<Name>`, `synthetic:<name>`, CSV folders), structural encodings per
graph, datasets of graph items and the padded collate the GPS model reads.

A CSV folder holds `nodes.csv` (`id`, numeric feature columns, `label`) and `edges.csv` (`src, dst[, weight]`,
or `source, target`), both optionally with a `graph` column for many small graphs, whose labels then sit in
`graphs.csv` (`graph, label`). Edges are read as undirected. Nodes without feature columns (and PyG graphs
without `x`) are read with zero features, x (N, 0); the task then builds structural features for them.

Legend: B graphs in a batch, N nodes (padded per batch), F features, E edges, K lap-PE width, R walk steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.graphs import synthetic
from panformer.graphs.structure import (
    NeighbourSampler,
    laplacian_pe,
    random_walk_pe,
    shortest_path_distances,
    undirected,
)
from panformer.graphs.synthetic import RawGraph

PLANETOID = {"Cora", "CiteSeer", "PubMed"}
SYNTHETIC = {"sbm": "node", "cycles": "graph", "triangles": "graph"}


@dataclass
class GraphSource:
    """What a data source holds: graphs, whether targets are per node or per graph, and given splits."""

    graphs: list[RawGraph]
    level: str  # "node" or "graph"
    name: str
    masks: dict[str, Tensor] | None = None  # node level: the dataset's own train/val/test masks
    graph_names: list[str] | None = None  # graph ids from files, for per-graph output rows


# --- reading sources -----------------------------------------------------------------------------


def load_source(source: str, *, cache_dir: Path, synthetic_size: int, seed: int) -> GraphSource:
    if source.startswith("synthetic:"):
        name = source.split(":", 1)[1]
        if name == "sbm":
            graph = synthetic.stochastic_block_model(nodes=synthetic_size, seed=seed)
            return GraphSource([graph], "node", source)
        if name == "cycles":
            return GraphSource(synthetic.cycles(graphs=synthetic_size, seed=seed), "graph", source)
        if name == "triangles":
            return GraphSource(synthetic.triangles(graphs=synthetic_size, seed=seed), "graph", source)
        raise UserError(f"--data {source}: unknown synthetic set; use one of "
                        + ", ".join(f"synthetic:{n}" for n in SYNTHETIC))
    if source.startswith("pyg:"):
        return load_pyg(source.split(":", 1)[1], cache_dir=cache_dir)
    path = Path(source)
    if path.is_dir():
        return read_csv_folder(path)
    raise UserError(f"--data {source}: give pyg:<Name>, synthetic:<sbm|cycles|triangles> or a folder holding "
                    "nodes.csv and edges.csv")


def load_pyg(name: str, *, cache_dir: Path) -> GraphSource:
    """A torch_geometric dataset: KarateClub ships with PyG; others download into `cache_dir` when online."""
    import torch_geometric.datasets as pyg_datasets

    root = cache_dir / name.replace("/", "_")
    try:
        if name == "KarateClub":
            dataset = pyg_datasets.KarateClub()
        elif name in PLANETOID:
            dataset = pyg_datasets.Planetoid(str(root), name)
        elif name.startswith("TU/"):
            dataset = pyg_datasets.TUDataset(str(root), name[3:])
        elif name.isidentifier() and isinstance(getattr(pyg_datasets, name, None), type):
            try:
                dataset = getattr(pyg_datasets, name)(str(root))
            except TypeError:
                raise UserError(f"--data pyg:{name}: this dataset needs arguments Panformer does not pass; "
                                "save it as nodes.csv/edges.csv instead") from None
        else:
            raise UserError(f"--data pyg:{name}: not a torch_geometric dataset; try pyg:KarateClub, pyg:Cora, "
                            "pyg:TU/MUTAG (any TUDataset) or a class name from torch_geometric.datasets")
    except Exception as err:
        # Offline: urllib's and aiohttp's connection errors (OSErrors or aiohttp.ClientError).
        if not isinstance(err, OSError) and not type(err).__module__.startswith(("aiohttp", "fsspec")):
            raise
        raise UserError(f"--data pyg:{name}: could not download it into {root} ({type(err).__name__}); connect "
                        "to the internet once, or use pyg:KarateClub / synthetic:<name> offline") from None
    graphs = []
    for data in dataset:
        n = int(data.num_nodes)
        x = data.x.float() if data.x is not None else torch.zeros(n, 0)
        graphs.append(RawGraph(x=x, edge_index=data.edge_index.long(), y=data.y.squeeze(),
                               node_ids=[str(i) for i in range(n)]))
    first = dataset[0]
    node_level = len(dataset) == 1 and first.y is not None and first.y.numel() == first.num_nodes
    masks = None
    if node_level and all(hasattr(first, f"{s}_mask") for s in ("train", "val", "test")):
        masks = {s: getattr(first, f"{s}_mask") for s in ("train", "val", "test")}
    return GraphSource(graphs, "node" if node_level else "graph", f"pyg:{name}", masks)


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} does not exist; a graph folder needs nodes.csv and edges.csv")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({type(err).__name__}); fix the file") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}")
    if table.empty:
        raise UserError(f"{path}: no rows; an empty graph cannot be used")
    return table


def _read_edges_csv(path: Path) -> pd.DataFrame:
    """edges.csv with `src, dst` columns; `source, target` (networkx's and Gephi's names) are read as those."""
    edges = _read_csv(path, [])
    if not {"src", "dst"} & set(edges.columns) and {"source", "target"} <= set(edges.columns):
        edges = edges.rename(columns={"source": "src", "target": "dst"})
    missing = [c for c in ("src", "dst") if c not in edges.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected src, dst (or source, target)")
    return edges


def read_csv_folder(folder: Path, *, require_labels: bool = True) -> GraphSource:
    """nodes.csv + edges.csv (+ graphs.csv when there is a `graph` column) -> graphs."""
    nodes = _read_csv(folder / "nodes.csv", ["id"])
    edges = _read_edges_csv(folder / "edges.csv")
    many = "graph" in nodes.columns
    if many != ("graph" in edges.columns):
        raise UserError(f"{folder}: nodes.csv and edges.csv must both have a `graph` column, or neither")
    labels: dict[str, Any] = {}
    if many and (folder / "graphs.csv").is_file():
        table = _read_csv(folder / "graphs.csv", ["graph", "label"])
        labels = dict(zip(table["graph"].astype(str), table["label"], strict=True))
    elif many and require_labels:
        raise UserError(f"{folder}: graphs.csv (graph, label) is missing; it holds one label per graph")
    feature_columns = [c for c in nodes.columns if c not in ("id", "label", "graph")]
    for column in feature_columns:
        if not pd.api.types.is_numeric_dtype(nodes[column]):
            raise UserError(f"{folder / 'nodes.csv'}: feature column '{column}' is not numeric; convert or drop it")
    if not many and "label" not in nodes.columns and require_labels:
        raise UserError(f"{folder / 'nodes.csv'}: missing column label (one label per node)")
    if nodes[feature_columns].isna().any().any():
        raise UserError(f"{folder / 'nodes.csv'}: empty feature values; fill them in")
    nodes = nodes.assign(id=nodes["id"].astype(str), graph=nodes["graph"].astype(str) if many else "0")
    edges = edges.assign(src=edges["src"].astype(str), dst=edges["dst"].astype(str),
                         graph=edges["graph"].astype(str) if many else "0")
    graphs, names = [], []
    edge_groups = dict(tuple(edges.groupby("graph", sort=False)))
    for graph_id, group in nodes.groupby("graph", sort=False):
        ids = group["id"].tolist()
        if len(set(ids)) != len(ids):
            raise UserError(f"{folder / 'nodes.csv'}: node ids repeat within graph {graph_id}; make them unique")
        index = {node: i for i, node in enumerate(ids)}
        e = edge_groups.pop(graph_id, edges.iloc[:0])
        unknown = sorted((set(e["src"]) | set(e["dst"])) - index.keys())
        if unknown:
            raise UserError(f"{folder / 'edges.csv'}: {len(unknown)} edge end(s) name unknown nodes (e.g. "
                            f"'{unknown[0]}'{'' if not many else f' in graph {graph_id}'}); add them to nodes.csv")
        edge_index = torch.tensor([[index[s] for s in e["src"]], [index[d] for d in e["dst"]]], dtype=torch.long)
        edge_index = edge_index.reshape(2, -1)
        if "weight" in e.columns:  # non-positive weights mean "no edge"
            edge_index = edge_index[:, torch.from_numpy(e["weight"].to_numpy() > 0)]
        x = torch.tensor(group[feature_columns].to_numpy(np.float32).reshape(len(ids), len(feature_columns)))
        if many:
            y = labels.get(graph_id)
        else:
            y = group["label"].tolist() if "label" in group.columns else None
        graphs.append(RawGraph(x=x, edge_index=torch.cat([edge_index, edge_index.flip(0)], 1), y=y, node_ids=ids))
        names.append(graph_id)
    if edge_groups:
        extra = next(iter(edge_groups))
        raise UserError(f"{folder / 'edges.csv'}: graph '{extra}' has edges but no nodes in nodes.csv")
    return GraphSource(graphs, "graph" if many else "node", str(folder), graph_names=names)


def fingerprint(graphs: list[RawGraph]) -> str:
    digest = hashlib.sha256()
    for g in graphs:
        digest.update(g.x.numpy().tobytes())
        digest.update(g.edge_index.numpy().tobytes())
        digest.update(str(g.y if not isinstance(g.y, Tensor) else g.y.tolist()).encode())
    return digest.hexdigest()[:16]


# --- graph items and batches ---------------------------------------------------------------------


@dataclass
class GraphItem:
    """One graph ready for the model: features, edges, encodings and targets.

    target: node level (N,) long class index, -1 = not scored; graph level () long or float.
    """

    x: Tensor  # (N, F)
    edge_index: Tensor  # (2, E), both directions
    lap: Tensor  # (N, K)
    walk: Tensor  # (N, R)
    spd: Tensor | None  # (N, N) uint8 or None when the model has no distance bias
    target: Tensor
    nodes: Tensor | None = None  # node-level items: which original nodes these are (N,)


@dataclass(frozen=True)
class Encodings:
    lap_pe: int
    walk_steps: int
    max_distance: int  # 0: no shortest-path bias


def encode(x: Tensor, edge_index: Tensor, target: Tensor, enc: Encodings, *, nodes: Tensor | None = None) -> GraphItem:
    n = x.shape[0]
    edge_index = undirected(edge_index, n)
    return GraphItem(
        x=x, edge_index=edge_index, lap=laplacian_pe(edge_index, n, enc.lap_pe),
        walk=random_walk_pe(edge_index, n, enc.walk_steps),
        spd=shortest_path_distances(edge_index, n, enc.max_distance) if enc.max_distance > 0 else None,
        target=target, nodes=nodes,
    )


class ItemDataset(Dataset):
    """Prepared graph items (graph-level tasks, or one whole graph repeated for full-batch node tasks)."""

    def __init__(self, items: list[GraphItem], *, repeat: int = 1) -> None:
        self.items, self.repeat = items, repeat

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, i: int) -> GraphItem:
        return self.items[i % len(self.items)]


class EgoGraphDataset(Dataset):
    """Node classification on large graphs: each item is the sampled neighbourhood of one seed node.

    Training draws fresh neighbours each time; evaluation draws them from a generator seeded by the node,
    so validation and test scores are reproducible. Encodings are those of the ego graph (exact ones of a
    huge graph would cost O(N * E)).
    """

    def __init__(self, graph: RawGraph, labels: Tensor, seeds: Tensor, sampler: NeighbourSampler, enc: Encodings,
                 *, train: bool) -> None:
        self.graph, self.labels, self.seeds, self.sampler = graph, labels, seeds, sampler
        self.enc, self.train = enc, train

    def __len__(self) -> int:
        return self.seeds.numel()

    def __getitem__(self, i: int) -> GraphItem:
        seed = self.seeds[i : i + 1]
        generator = None if self.train else torch.Generator().manual_seed(int(seed))
        nodes, edge_index = self.sampler.sample(seed, generator)
        target = torch.full((nodes.numel(),), -1, dtype=torch.long)
        target[0] = self.labels[seed[0]]  # only the seed is scored
        return encode(self.graph.x[nodes], edge_index, target, self.enc, nodes=nodes)


@dataclass(frozen=True)
class FixedShape:
    """What every batch is padded to, so that a training step replayed from a CUDA graph (`train.cuda_graphs`)
    sees one shape: N nodes per graph, more than any graph has (the last slot is always padding), and E edges
    per batch, as many as the B graphs with the most edges have together."""

    nodes: int
    edges: int

    @classmethod
    def covering(cls, items: Sequence[GraphItem], batch_size: int) -> FixedShape:
        most = sorted((item.edge_index.shape[1] for item in items), reverse=True)[:batch_size]
        return cls(nodes=max(item.x.shape[0] for item in items) + 1, edges=max(1, sum(most)))


def collate(items: list[GraphItem], *, shape: FixedShape | None = None) -> dict[str, Tensor]:
    """Pad B graphs to the largest N (or to ``shape``). Edges index the flattened (B * N) node axis, so message
    passing runs on the padded tensor directly; padded nodes have `valid` False and no edges, except under
    ``shape``, where the edges are filled up with self-loops of the last (padding) node, which the model masks."""
    batch, width = len(items), max(item.x.shape[0] for item in items)
    if shape is not None:
        if width >= shape.nodes:
            raise ValueError(f"a graph of {width} nodes does not fit the fixed shape's {shape.nodes} (one is padding)")
        width = shape.nodes
    feat = items[0].x.shape[1]
    x = torch.zeros(batch, width, feat)
    lap = torch.zeros(batch, width, items[0].lap.shape[1])
    walk = torch.zeros(batch, width, items[0].walk.shape[1])
    valid = torch.zeros(batch, width, dtype=torch.bool)
    has_spd = items[0].spd is not None
    spd = torch.zeros(batch, width, width, dtype=torch.uint8)  # the model embeds it; uint8 keeps batches small
    node_level = items[0].target.dim() == 1
    target = torch.full((batch, width), -1, dtype=torch.long) if node_level else torch.stack([i.target for i in items])
    edges = []
    for b, item in enumerate(items):
        n = item.x.shape[0]
        x[b, :n], lap[b, :n], walk[b, :n], valid[b, :n] = item.x, item.lap, item.walk, True
        if has_spd:
            spd[b, :n, :n] = item.spd
        if node_level:
            target[b, :n] = item.target
        edges.append(item.edge_index + b * width)
    edge_index = torch.cat(edges, dim=1)
    if shape is not None:
        spare = shape.edges - edge_index.shape[1]
        if spare < 0:
            raise ValueError(f"{edge_index.shape[1]} edges do not fit the fixed shape's {shape.edges}")
        edge_index = torch.cat((edge_index, torch.full((2, spare), batch * width - 1, dtype=edge_index.dtype)), dim=1)
    out = {"x": x, "lap": lap, "walk": walk, "valid": valid, "edge_index": edge_index, "target": target}
    if has_spd:
        out["spd"] = spd
    return out
