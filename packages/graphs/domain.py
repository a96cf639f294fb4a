"""The graphs domain: one registry entry, one task per kind of recipe (chosen by the recipe's `task`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from panformer.engine.config import Recipe
from panformer.engine.domain import Domain, RecipeChoice, Task
from panformer.engine.errors import UserError
from panformer.graphs.data import PLANETOID
from panformer.graphs.flows import DST, SRC, FlowRecipe, IntrusionDetectionTask, flow_task
from panformer.graphs.images import IMAGE_SUFFIXES, ImageClassificationTask, ImageGraphRecipe
from panformer.graphs.static import (
    GraphClassificationTask,
    GraphRegressionTask,
    NodeClassificationTask,
    StaticGraphRecipe,
)
from panformer.graphs.temporal import LinkPredictionTask, TemporalLinkRecipe

TASKS: dict[str, tuple[type[Recipe], type[Task]]] = {
    "node-classification": (StaticGraphRecipe, NodeClassificationTask),
    "graph-classification": (StaticGraphRecipe, GraphClassificationTask),
    "graph-regression": (StaticGraphRecipe, GraphRegressionTask),
    "image-classification": (ImageGraphRecipe, ImageClassificationTask),
    "link-prediction": (TemporalLinkRecipe, LinkPredictionTask),
    "intrusion-detection": (FlowRecipe, IntrusionDetectionTask),
}
# `train --data synthetic:<name>` without --recipe: the recipe built on that generator.
SYNTHETIC_RECIPES = {"sbm": "sbm", "cycles": "demo", "triangles": "triangles", "temporal": "temporal-link",
                     "flows": "flows"}


def csv_columns(path: Path) -> set[str]:
    """The header of a CSV file (empty if it is not readable as one)."""
    try:
        return set(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return set()


def has_fractional_labels(graphs_csv: Path) -> bool:
    """graphs.csv labels with a fractional part (graph regression) rather than class names or ids."""
    try:
        labels = pd.read_csv(graphs_csv, usecols=["label"])["label"]
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False  # missing or unreadable: the loader reports it
    return pd.api.types.is_float_dtype(labels) and bool((labels.dropna() % 1 != 0).any())


class GraphsDomain(Domain):
    name = "graphs"
    recipe_type = StaticGraphRecipe
    cli_app = "panformer.graphs.cli:app"

    def recipe_type_for(self, raw: dict[str, Any]) -> type[Recipe]:
        task = raw.get("task", "node-classification")
        if task not in TASKS:
            raise UserError(f"recipe task '{task}' is not a graphs task; use one of: {', '.join(TASKS)}")
        return TASKS[task][0]

    def task(self, recipe: Recipe) -> Task:
        if isinstance(recipe, FlowRecipe):  # classifier, pretrained classifier or anomaly scores
            return flow_task(recipe)
        return TASKS[recipe.task][1]()

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None:
            return RecipeChoice("karate", "no --data: node classification on Zachary's karate club, offline")
        kind, _, name = data.partition(":")
        if kind == "synthetic" and name in SYNTHETIC_RECIPES:
            return RecipeChoice(SYNTHETIC_RECIPES[name], f"the synthetic set {data}")
        if kind == "synthetic":
            raise self.unrecognised_data(data, "unknown synthetic set; known: "
                                               + ", ".join(f"synthetic:{n}" for n in SYNTHETIC_RECIPES))
        if kind == "pyg":
            if name == "KarateClub":
                return RecipeChoice("karate", "the karate club graph, node labels")
            if name in PLANETOID:
                return RecipeChoice("cora", "a Planetoid citation graph, node labels, neighbour-sampled")
            if name.startswith("TU/"):
                return RecipeChoice("demo", "a TUDataset: many small graphs, one class per graph")
            raise self.unrecognised_data(data, "cannot tell whether it holds node or graph labels")
        if kind == "tgb":
            return RecipeChoice("temporal-link", "a TGB link-prediction dataset")
        if kind in ("sklearn", "torchvision"):
            return RecipeChoice("digits-sagvit", "an image dataset, classified through patch graphs")
        path = Path(data)
        if path.is_dir() and (path / "nodes.csv").is_file() and (path / "edges.csv").is_file():
            if "graph" not in csv_columns(path / "nodes.csv"):
                return RecipeChoice("karate", "a CSV graph folder: one graph, node labels")
            if has_fractional_labels(path / "graphs.csv"):
                return RecipeChoice("triangles", "a CSV graph folder of many graphs with numeric labels: regression")
            return RecipeChoice("demo", "a CSV graph folder of many graphs, one class per graph")
        if path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.glob("*/*")):
            return RecipeChoice("digits-sagvit", "a folder of class folders of images")
        if path.is_file() and path.suffix.lower() == ".csv":
            columns = csv_columns(path)
            if {SRC, DST} <= columns:
                return RecipeChoice("flows", "a NetFlow CSV: intrusion detection per flow")
            if {"src", "dst", "t"} <= columns:
                return RecipeChoice("temporal-link", "a temporal edge CSV (src, dst, t)")
            raise self.unrecognised_data(data, f"a CSV with neither src, dst, t (temporal edges) nor {SRC}, "
                                               f"{DST} (NetFlow)")
        if not path.exists():
            raise self.unrecognised_data(data, "no such file or folder, and not pyg:, tgb:, synthetic:, sklearn: "
                                               "or torchvision: data")
        raise self.unrecognised_data(data, "not a graph folder (nodes.csv + edges.csv), an image folder, a "
                                           "temporal edge CSV or a NetFlow CSV")
