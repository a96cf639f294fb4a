"""`train.cuda_graphs`: a training step captured once per batch shape and replayed (GPU), its CPU-side rules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from panformer.engine import checkpoint as ckpt
from panformer.engine.cuda_graphs import GraphedTrainStep, batch_signature
from panformer.engine.trainer import Trainer

from .toy_domain import ToyDomain, ToyRecipe

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_graph_is_specific_to_shapes_dtypes_and_values_of_the_batch():
    x = torch.zeros(4, 3)
    assert batch_signature({"x": x, "n": 2}) == batch_signature({"n": 2, "x": torch.ones(4, 3)})
    assert batch_signature({"x": x}) != batch_signature({"x": torch.zeros(5, 3)})
    assert batch_signature((x, x)) != batch_signature((x, x.long()))
    assert batch_signature({"x": x, "n": 2}) != batch_signature({"x": x, "n": 3})
    assert batch_signature({"x": x, "names": ["a"]}) is not None
    assert batch_signature({"x": x, "extra": [{1, 2}]}) is None  # a set cannot be a key: such batches run eagerly


def test_the_step_refuses_an_optimizer_that_cannot_be_captured():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="capturable"):
        GraphedTrainStep(model, lambda m, b: m(b).sum(), torch.optim.AdamW(model.parameters()))


def test_learning_rates_kept_as_device_tensors_are_saved_as_numbers():
    groups = [{"lr": torch.tensor(0.5), "params": ["a"]}]
    assert ckpt._numbers(groups) == [{"lr": 0.5, "params": ["a"]}]
    json.dumps(ckpt._numbers({"_last_lr": [torch.tensor(0.25)]}))


def test_on_the_cpu_the_option_trains_eagerly_and_alike(tmp_path):
    def run(name: str, graphs: bool) -> list[dict]:
        recipe = ToyRecipe.model_validate({"train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                                     "cuda_graphs": graphs}})
        Trainer(ToyDomain(), recipe, run_dir=tmp_path / name).fit()
        return [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]

    plain, graphed = run("plain", False), run("graphed", True)
    assert [r["train_loss"] for r in plain] == [r["train_loss"] for r in graphed]


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)


def mse(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])


def batches(n: int, size: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(size, 8, generator=g).cuda(), "y": torch.randn(size, generator=g).cuda()}
            for _ in range(n)]


def trained(graphed: bool, data: list[dict]) -> tuple[list[float], nn.Module, GraphedTrainStep | None]:
    torch.manual_seed(0)
    model = Regressor().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, capturable=True)
    losses = []
    if graphed:
        step = GraphedTrainStep(model, mse, optimizer, grad_clip=1.0)
        for batch in data:
            losses.append(float(step(batch)))
        return losses, model, step
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        loss = mse(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
    return losses, model, None


@cuda
@pytest.mark.gpu
def test_replayed_steps_train_as_eager_steps_do():
    data = batches(12)
    eager, eager_model, _ = trained(False, data)
    replayed, model, step = trained(True, data)
    assert step.captured_steps == 12 - 3  # 3 eager warm-up steps, then one capture replayed for the rest
    torch.testing.assert_close(torch.tensor(replayed), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    for a, b in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.gpu
def test_a_scheduler_reaches_the_captured_step_and_new_shapes_get_their_own_graph():
    data = batches(6)
    _, model, step = trained(True, data)
    for group in step.optimizer.param_groups:
        assert torch.is_tensor(group["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda _: 0.0)  # the rate filled in place: 0
    scheduler.step()
    before = [p.detach().clone() for p in model.parameters()]
    step(data[0])
    for a, b in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(a, b)  # a zero learning rate replayed: nothing moves (weight decay x lr = 0)
    small = batches(5, size=4)
    for batch in small:
        step(batch)
    assert len(step.graphs) == 2


@cuda
@pytest.mark.gpu
def test_a_step_that_syncs_with_the_host_runs_eagerly_with_a_warning():
    def syncing(model, batch):
        loss = mse(model, batch)
        return loss * (1.0 if float(loss) >= 0 else 0.0)  # a host read: not capturable

    model = Regressor().cuda()
    step = GraphedTrainStep(model, syncing, torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True))
    data = batches(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [float(step(b)) for b in data]
    assert not step.graphs and step.captured_steps == 0
    assert any("runs eagerly" in str(w.message) for w in caught)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_graph_of_part_of_a_step_is_refused_in_the_recipe():
    for extra in ({"grad_accum": 2}, {"compile": True}):
        with pytest.raises(ValueError, match="cuda_graphs captures one whole optimizer step"):
            ToyRecipe.model_validate({"train": {"cuda_graphs": True, **extra}})
