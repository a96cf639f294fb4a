"""A tiny domain for engine tests: noisy linear regression-as-classification on generated data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, Splits, Task


class ToyData(StrictModel):
    n: int = 96


class ToyModel(StrictModel):
    hidden: int = 16
    dropout: float = 0.2


class ToyRecipe(Recipe):
    domain: Literal["toy"] = "toy"
    data: ToyData = ToyData()
    model: ToyModel = ToyModel()


class Accuracy(Metrics):
    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, batch: Any, outputs: Tensor) -> None:
        self.correct += int((outputs.argmax(-1) == batch[1]).sum())
        self.total += len(batch[1])

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct / max(self.total, 1)}


class ToyTask(Task):
    monitor = "accuracy"

    def load_splits(self, recipe: ToyRecipe, *, source: str | None = None) -> Splits:
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(recipe.data.n, 4, generator=g)
        y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()
        a, b = int(0.6 * len(x)), int(0.8 * len(x))
        return Splits(TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b]), TensorDataset(x[b:], y[b:]),
                      info={"features": 4}, fingerprint="toy")

    def build_model(self, recipe: ToyRecipe, info: dict[str, Any]) -> nn.Module:
        h = recipe.model.hidden
        return nn.Sequential(nn.Linear(info["features"], h), nn.ReLU(), nn.Dropout(recipe.model.dropout), nn.Linear(h, 2))

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        logits = model(batch[0])
        return nn.functional.cross_entropy(logits, batch[1]), logits.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return Accuracy()

    def predict(self, model: nn.Module, **kwargs: Any) -> list[Path]:
        raise NotImplementedError("the toy domain is for engine tests only")

    def demo_input(self, recipe: Recipe, info: dict[str, Any], workdir: Path) -> Path:
        raise NotImplementedError("the toy domain is for engine tests only")


class ToyDomain(Domain):
    name = "toy"
    recipe_type = ToyRecipe
    cli_app = "unused:app"

    def task(self, recipe: Recipe) -> Task:
        return ToyTask()
