"""The time-series domain: one registry entry, one task per kind of recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panformer.engine.config import Recipe
from panformer.engine.domain import Domain, RecipeChoice, Task
from panformer.engine.errors import UserError
from panformer.timeseries.classification import ClassificationRecipe, ClassificationTask
from panformer.timeseries.data import SERIES_SUFFIXES, bundled_datasets, has_no_header, label_column
from panformer.timeseries.forecasting import ForecastingRecipe, ForecastingTask
from panformer.timeseries.spatiotemporal import SpatioTemporalRecipe, SpatioTemporalTask
from panformer.timeseries.tabular import AEON_SERIES

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
        if isinstance(recipe, ClassificationRecipe):
            return ClassificationTask(augment=recipe.data.augment)  # augmentation happens in its loss
        return TASKS[recipe.task][1]()

    def default_recipe(self, data: str | None) -> RecipeChoice:
        """Class labels in the data -> `classification`; series without them -> `forecast`."""
        if data is None:
            return RecipeChoice("classification", "no --data: the default classifier on aeon:BasicMotions, offline")
        if data.startswith("aeon:"):
            return self._aeon_recipe(data)
        path = Path(data)
        suffix = path.suffix.lower()
        if path.is_dir():
            if any(p.suffix.lower() in SERIES_SUFFIXES for p in path.glob("*_TRAIN.*")):
                return RecipeChoice("classification", "a folder of <Name>_TRAIN/_TEST files")
            raise self.unrecognised_data(data, "a folder without <Name>_TRAIN.ts/.tsv/.arff/.csv/.parquet files")
        if not path.is_file():
            raise self.unrecognised_data(data, "no such file")
        if suffix == ".tsf":
            return RecipeChoice("forecast", "a Monash archive .tsf file of series to forecast")
        if suffix in (".ts", ".tsv", ".arff"):
            return RecipeChoice("classification", f"a UEA/UCR {suffix} file of labelled series")
        if suffix not in (".csv", ".parquet", ".pq"):
            raise self.unrecognised_data(data, "not a .ts/.tsv/.arff/.tsf/.csv/.parquet file")
        if has_no_header(path):
            if path.stem.upper().endswith(("_TRAIN", "_TEST")):
                return RecipeChoice("classification", "a CSV without header named *_TRAIN: the UCR layout, label first")
            raise self.unrecognised_data(
                data, "no header row, so its layout cannot be told; add a header (time and value columns) to "
                "forecast, or name it <Name>_TRAIN.csv for the UCR layout (class label first)"
            )
        if (label := label_column(_table_columns(path))) is not None:
            return RecipeChoice("classification", f"a table with a class column '{label}'")
        return RecipeChoice("forecast", "a table of series without a label/class/target column")

    def _aeon_recipe(self, data: str) -> RecipeChoice:
        from aeon.datasets.tsc_datasets import multivariate, univariate

        name = data.removeprefix("aeon:")
        if name.lower() in {n.lower() for n in AEON_SERIES}:
            return RecipeChoice("forecast", f"{data} is one of aeon's forecasting series")
        if name in bundled_datasets() or name in univariate or name in multivariate:
            return RecipeChoice("classification", f"{data} is a UEA/UCR classification dataset")
        raise self.unrecognised_data(data, "neither a UEA/UCR classification dataset nor an aeon forecasting series")


def _table_columns(path: Path) -> list[str]:
    """The column names of a CSV/Parquet file, read from its header only."""
    from panformer.timeseries.tabular import read_frame

    if path.suffix.lower() == ".csv":
        import pandas as pd

        try:
            return [str(c).strip() for c in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]
        except (ValueError, OSError):
            return [str(c).strip() for c in read_frame(path).columns]  # its one-line error names the problem
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):
        return [str(c) for c in read_frame(path).columns]
