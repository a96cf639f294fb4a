"""The small interface a domain implements to plug into the engine, and the registry that finds domains.

A domain says how to load its data splits, build its model, compute its loss and metrics, and how
`predict` reads inputs and writes outputs. The engine owns everything else: the loop, checkpoints,
logging, distributed training and the CLI.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, list_recipes
from panformer.engine.errors import UserError

ENTRY_POINT_GROUP = "panformer.domains"


@dataclass
class Splits:
    """Train/validation/test datasets plus the facts a model and `predict` need later.

    `info` must be JSON-serialisable (class names, channel counts, ...): it is saved in every checkpoint.
    Fitted statistics that are tensors (e.g. normalisation) belong in the model as buffers instead.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: dict[str, Any]
    fingerprint: str


class Metrics(ABC):
    """Accumulates a metric over batches. The engine averages the loss itself."""

    @abstractmethod
    def update(self, batch: Any, outputs: Any) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


@dataclass
class DemoResult:
    """What `make demo` reports for one domain."""

    metric: str
    value: float
    outputs: list[Path] = field(default_factory=list)


class Task(ABC):
    """How one kind of recipe is trained: data splits, model, loss, metrics and predict.

    A domain with one task (speech separation) has one Task; a domain with several (time-series
    classification and forecasting) picks one per recipe.
    """

    # The validation metric that selects the best checkpoint (ties broken by lower loss).
    monitor: ClassVar[str]
    monitor_mode: ClassVar[Literal["max", "min"]] = "max"
    # File or folder name `make demo` gives to `predict`'s output.
    demo_output_name: ClassVar[str] = "predictions.csv"

    @abstractmethod
    def load_splits(self, recipe: Recipe, *, source: str | None = None) -> Splits:
        """Load the data named by `source` (or the recipe's default) and split it."""

    @abstractmethod
    def build_model(self, recipe: Recipe, info: dict[str, Any]) -> nn.Module: ...

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        """Prepare a new model on the training split before the loop: data-derived buffers, or a
        self-supervised pretraining stage (relational, graphs' flows). Not called on resume."""
        return None  # most tasks fit nothing beyond what `load_splits` puts in `info`

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """Return the mean loss of the batch and whatever `Metrics.update` needs."""

    @abstractmethod
    def metrics(self, info: dict[str, Any]) -> Metrics: ...

    def test_metrics(self, info: dict[str, Any]) -> Metrics:
        """Metrics of the final test evaluation and of `evaluate`: those of validation unless a task adds
        slower ones (perceptual speech scores, say) that would cost too much every epoch."""
        return self.metrics(info)

    def evaluation_extras(
        self, model: nn.Module, *, recipe: Recipe, info: dict[str, Any], splits: Splits, device: torch.device
    ) -> dict[str, float]:
        """Scores beyond the per-batch metrics, added by `evaluate --checkpoint` (once, not every epoch):
        e.g. metrics of samples a generative model draws, or its sampling speed."""
        return {}

    def epoch_log(self, splits: Splits) -> dict[str, float]:
        """Numbers added to every epoch's `log.jsonl` record, e.g. how many unreadable files were skipped."""
        return {}

    def batch_size_of(self, batch: Any) -> int:
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()))
        return int(first.shape[0])

    @abstractmethod
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: Recipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
    ) -> list[Path]:
        """Read `input_path`, write predictions to `output_path` atomically (and PNG plots with `plot`);
        return the files written."""

    def evaluation_plot(
        self,
        model: nn.Module,
        dataset: Dataset,
        info: dict[str, Any],
        *,
        path: Path,
        batch_size: int,
        device: torch.device,
    ) -> Path | None:
        """Write a PNG that shows the evaluation (e.g. a confusion matrix); None if the task has none."""
        return None

    @abstractmethod
    def demo_input(self, recipe: Recipe, info: dict[str, Any], workdir: Path) -> Path:
        """A file `predict` can read, for the demo (written into `workdir` or found in a package)."""


@dataclass(frozen=True)
class RecipeChoice:
    """The recipe `train` runs when no --recipe is given, and why (shown to the user in one line)."""

    name: str  # a recipe name of the domain (see `recipes`)
    reason: str  # e.g. "a CSV graph folder (nodes.csv + edges.csv)"


class Domain(ABC):
    """One domain package (time series, speech, ...), as the engine and the CLI see it."""

    name: ClassVar[str]
    recipe_type: ClassVar[type[Recipe]]
    # "module:attribute" of the domain's Typer app (resolved lazily to avoid import cycles).
    cli_app: ClassVar[str]

    def recipe_type_for(self, raw: dict[str, Any]) -> type[Recipe]:
        """The recipe class for a raw recipe dict (domains with several tasks choose by its fields)."""
        return self.recipe_type

    @abstractmethod
    def task(self, recipe: Recipe) -> Task:
        """The task that trains and runs this recipe."""

    def default_recipe(self, data: str | None) -> RecipeChoice:
        """The recipe `train` runs without --recipe: the one the kind of `data` (train's --data) implies,
        or the domain's usual recipe when `data` is None. Look only at names and file headers (no loading).
        Data that does not exist or whose kind cannot be told: raise `self.unrecognised_data(...)`.

        Domains override this; the base keeps --recipe required.
        """
        raise UserError("train needs --recipe NAME|PATH (see the `recipes` command) or --resume DIR")

    def unrecognised_data(self, data: str, problem: str) -> UserError:
        """`default_recipe`'s one-line error: names --data and the problem, lists the domain's recipes."""
        names = ", ".join(list_recipes(self.name)) or "none"
        return UserError(f"--data {data}: {problem} (recipes for --recipe: {names})")

    def app(self) -> Any:
        module, _, attr = self.cli_app.partition(":")
        return getattr(importlib.import_module(module), attr)


@cache
def registered_domains() -> dict[str, type[Domain]]:
    """Domains installed through the `panformer.domains` entry point group."""
    found: dict[str, type[Domain]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return dict(sorted(found.items()))


def get_domain(name: str) -> Domain:
    domains = registered_domains()
    if name not in domains:
        known = ", ".join(domains) or "none"
        raise UserError(f"unknown domain '{name}'; installed domains: {known}")
    return domains[name]()
