"""The graphs domain: one registry entry, one task per kind of recipe (chosen by the recipe's `task`)."""

from __future__ import annotations

from typing import Any

from panformer.engine.config import Recipe
from panformer.engine.domain import Domain, Task
from panformer.engine.errors import UserError
from panformer.graphs.flows import FlowRecipe, IntrusionDetectionTask, flow_task
from panformer.graphs.images import ImageClassificationTask, ImageGraphRecipe
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
