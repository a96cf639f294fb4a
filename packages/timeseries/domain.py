"""The time-series domain: one registry entry, one task per kind of recipe."""

from __future__ import annotations

from typing import Any

from panformer.engine.config import Recipe
from panformer.engine.domain import Domain, Task
from panformer.engine.errors import UserError
from panformer.timeseries.classification import ClassificationRecipe, ClassificationTask
from panformer.timeseries.forecasting import ForecastingRecipe, ForecastingTask
from panformer.timeseries.spatiotemporal import SpatioTemporalRecipe, SpatioTemporalTask

TASKS: dict[str, tuple[type[Recipe], type[Task]]] = {
    "classification": (ClassificationRecipe, ClassificationTask),
    "forecasting": (ForecastingRecipe, ForecastingTask),
    "spatiotemporal": (SpatioTemporalRecipe, SpatioTemporalTask),
}


class TimeSeriesDomain(Domain):
    name = "timeseries"
    recipe_type = ClassificationRecipe
    cli_app = "panformer.timeseries.cli:app"

    def recipe_type_for(self, raw: dict[str, Any]) -> type[Recipe]:
        task = raw.get("task", "classification")
        if task not in TASKS:
            raise UserError(f"recipe task '{task}' is not a time-series task; use one of: {', '.join(TASKS)}")
        return TASKS[task][0]

    def task(self, recipe: Recipe) -> Task:
        return TASKS[recipe.task][1]()
