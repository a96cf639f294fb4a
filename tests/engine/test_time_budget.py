"""`train.minutes`: training for a time budget instead of whole passes (equal-time comparisons)."""

from __future__ import annotations

import json
import time

import pytest

from panformer.engine import checkpoint as ckpt
from panformer.engine.trainer import Trainer, TrainingClock, warmup_cosine_by_time

from .toy_domain import ToyDomain, ToyRecipe, ToyTask

STEP_SECONDS = 0.01  # each loss evaluation sleeps this long, so the budget holds a known number of steps
BUDGET = 0.6  # seconds: ~60 steps of 8 samples, about 8 passes over the toy's 57 training samples
SLACK = 0.25  # seconds past a share: the step that crosses it, on a loaded machine


class Interrupted(Exception):
    pass


def slow_losses(monkeypatch, seconds: float) -> None:
    """Make every loss evaluation of the toy task take at least `seconds`."""
    loss = ToyTask.loss

    def slow(self, model, batch):
        time.sleep(seconds)
        return loss(self, model, batch)

    monkeypatch.setattr(ToyTask, "loss", slow)


@pytest.fixture
def slow_steps(monkeypatch):
    slow_losses(monkeypatch, STEP_SECONDS)


def recipe(epochs: int = 2) -> ToyRecipe:
    return ToyRecipe.model_validate({"train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                               "minutes": BUDGET / 60, "warmup_ratio": 0.05}})


def log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_time_budget_trains_its_time_in_passes_with_the_schedule_on_time(tmp_path, slow_steps):
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "run").fit()
    rows = log(tmp_path / "run")
    assert len(rows) == 2  # the validations: one per equal share of the budget
    spent = 0.0
    for share, row in enumerate(rows, start=1):  # epoch e ends at the first step past (e + 1) / 2 of the budget
        spent += row["train_seconds"]
        assert share * BUDGET / 2 <= spent < share * BUDGET / 2 + SLACK
    train_samples = 57  # int(0.6 * 96)
    assert sum(row["train_samples"] for row in rows) > train_samples  # passes follow one another (~8 unloaded)
    # The learning rate follows the time spent: half-way the cosine is near its middle, at the end near 0.
    assert 0.15 * 0.01 < rows[0]["lr"] < 0.85 * 0.01
    assert rows[1]["lr"] < 0.05 * 0.01


def test_a_run_resumed_under_a_time_budget_spends_only_what_was_left(tmp_path, slow_steps):
    def stop_after_first(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "run", callbacks=[stop_after_first]).fit()
    saved = ckpt.load_training_state(ckpt.read_pointer(tmp_path / "run" / "checkpoints", "LATEST"))[1]
    assert BUDGET / 2 <= saved["progress"]["train_seconds_spent"] < BUDGET / 2 + SLACK
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "run").fit(resume=True)
    rows = log(tmp_path / "run")
    assert [row["epoch"] for row in rows] == [0, 1]
    assert BUDGET <= rows[0]["train_seconds"] + rows[1]["train_seconds"] < BUDGET + SLACK  # not a fresh budget


def test_the_schedule_by_time_warms_up_then_decays_to_the_floor():
    clock = TrainingClock(budget=100.0)
    factor = warmup_cosine_by_time(clock, warmup_ratio=0.1, min_lr_ratio=0.2)
    values = []
    for spent in (0.0, 5.0, 10.0, 55.0, 100.0, 150.0):
        clock.spent = spent
        values.append(factor(0))
    assert values[0] == 0.01  # never 0 at the first step
    assert values[1] == pytest.approx(0.5) and values[2] == pytest.approx(1.0)
    assert values[3] == pytest.approx(0.6)  # half-way through the cosine: 0.2 + 0.8 * 0.5
    assert values[4] == pytest.approx(0.2) and values[5] == pytest.approx(0.2)


def test_gradient_accumulation_counts_every_micro_batch_as_training_time(tmp_path, slow_steps):
    run = ToyRecipe.model_validate({"train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                              "minutes": BUDGET / 60, "grad_accum": 4}})
    Trainer(ToyDomain(), run, run_dir=tmp_path / "run").fit()
    (row,) = log(tmp_path / "run")
    # Counting only each step's last micro-batch would run ~4x the budget in wall time.
    assert BUDGET <= row["train_seconds"] < BUDGET + 4 * SLACK / 2


def test_steps_longer_than_a_share_overrun_the_budget_by_one_step_in_all(tmp_path, monkeypatch):
    slow_losses(monkeypatch, 0.1)  # each step is longer than a share (0.3 s / 5)
    run = ToyRecipe.model_validate({"train": {"epochs": 5, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                              "minutes": 0.3 / 60}})
    Trainer(ToyDomain(), run, run_dir=tmp_path / "run").fit()
    rows = log(tmp_path / "run")
    assert len(rows) < 5  # shares a step had already spent were skipped
    assert 0.3 <= sum(row["train_seconds"] for row in rows) < 0.3 + 0.1 + SLACK


def test_on_train_start_runs_once_before_the_first_step(tmp_path, monkeypatch):
    events = []
    loss = ToyTask.loss

    def counted(self, model, batch):
        events.append("step")
        return loss(self, model, batch)

    monkeypatch.setattr(ToyTask, "loss", counted)
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "run", on_train_start=lambda: events.append("start")).fit()
    assert events[0] == "start" and events.count("start") == 1 and "step" in events
