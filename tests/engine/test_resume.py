"""Resume: an interrupted run, resumed, ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from panformer.engine import checkpoint as ckpt
from panformer.engine.trainer import Trainer

from .toy_domain import ToyDomain, ToyRecipe


class Interrupted(Exception):
    pass


def recipe(epochs: int = 5) -> ToyRecipe:
    # Dropout and shuffling both consume RNG: the test fails if either is not restored.
    return ToyRecipe.model_validate({"train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "device": "cpu"}})


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(ckpt.read_pointer(run_dir / "checkpoints", "LATEST") / ckpt.MODEL_FILE)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "straight").fit()

    def stop_after_epoch_2(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "broken", callbacks=[stop_after_epoch_2]).fit()
    assert ckpt.read_pointer(tmp_path / "broken" / "checkpoints", "LATEST").name == "epoch-0002"
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "broken").fit(resume=True)

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "broken")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_changes_something_if_rng_not_restored(tmp_path, monkeypatch):
    """Guard against a vacuous resume test: skipping the RNG restore must change the result."""
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "straight").fit()

    def stop(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "broken", callbacks=[stop]).fit()
    monkeypatch.setattr(ckpt, "set_rng_state", lambda tensors, plain: torch.manual_seed(999))
    Trainer(ToyDomain(), recipe(), run_dir=tmp_path / "broken").fit(resume=True)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "broken")
    assert any(not torch.equal(straight[k], resumed[k]) for k in straight)


def test_selection_uses_validation_and_test_is_reported(tmp_path):
    result = Trainer(ToyDomain(), recipe(epochs=4), run_dir=tmp_path / "run").fit()
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert best.config["epoch"] == result.best_epoch
    assert best.config["val_metrics"]["accuracy"] == result.val_metrics["accuracy"]
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / "recipe.yaml").is_file()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4


def interrupt_at(monkeypatch, call: int, *, how: str) -> None:
    """Make the toy task's `call`-th loss evaluation crash (a killed process) or send SIGINT (Ctrl-C)."""
    import signal

    from .toy_domain import ToyTask

    calls = {"n": 0}
    loss = ToyTask.loss

    def interrupting_loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            if how == "crash":
                raise Interrupted
            signal.raise_signal(signal.SIGINT)
        return loss(self, model, batch)

    monkeypatch.setattr(ToyTask, "loss", interrupting_loss)


def mid_epoch_recipe() -> ToyRecipe:
    return ToyRecipe.model_validate({"train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                               "checkpoint_minutes": 0}})


@pytest.mark.parametrize("how", ["crash", "ctrl-c"])
def test_a_run_stopped_inside_an_epoch_resumes_there_with_identical_weights(tmp_path, monkeypatch, how):
    from panformer.engine.errors import TrainingInterrupted

    Trainer(ToyDomain(), mid_epoch_recipe(), run_dir=tmp_path / "straight").fit()
    with monkeypatch.context() as patch:
        # 57 training rows in batches of 8: epoch 0 is calls 1-8 (+3 validation), call 15 is epoch 1's 4th batch.
        interrupt_at(patch, 15, how=how)
        with pytest.raises(Interrupted if how == "crash" else TrainingInterrupted, match=None if how == "crash"
                           else r"interrupted at epoch 1, step 12; continue with the same command and --resume"):
            Trainer(ToyDomain(), mid_epoch_recipe(), run_dir=tmp_path / "broken").fit()
    latest = ckpt.read_pointer(tmp_path / "broken" / "checkpoints", "LATEST")
    assert latest.name.startswith("epoch-0001-step-"), latest.name
    Trainer(ToyDomain(), mid_epoch_recipe(), run_dir=tmp_path / "broken").fit(resume=True)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "broken")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # Mid-epoch folders do not pile up: only epoch ends (and the best) remain.
    assert not list((tmp_path / "broken" / "checkpoints").glob("epoch-*-step-*"))


def test_ctrl_c_exits_130_with_the_resume_command():
    import typer

    from panformer.engine.cli import user_errors_exit_2
    from panformer.engine.errors import TrainingInterrupted

    @user_errors_exit_2
    def train() -> None:
        raise TrainingInterrupted("interrupted at epoch 3, step 40; continue with the same command and --resume runs/x")

    with pytest.raises(typer.Exit) as exit_:
        train()
    assert exit_.value.exit_code == 130


def test_without_a_validation_split_the_final_epoch_is_kept(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    from .toy_domain import ToyTask

    load_splits = ToyTask.load_splits

    def no_validation(self, recipe, *, source=None):
        splits = load_splits(self, recipe, source=source)
        splits.val = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        return splits

    monkeypatch.setattr(ToyTask, "load_splits", no_validation)
    result = Trainer(ToyDomain(), recipe(epochs=4), run_dir=tmp_path / "run").fit()
    assert result.best_epoch == 3
    final = ckpt.read_pointer(tmp_path / "run" / "checkpoints", "LATEST")
    assert result.best_checkpoint.name == "best-0003"
    assert torch.equal(load_file(final / ckpt.MODEL_FILE)["3.weight"],
                       load_file(result.best_checkpoint / ckpt.MODEL_FILE)["3.weight"])
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0


def test_a_non_finite_loss_stops_the_run_with_advice(tmp_path, monkeypatch):
    from .toy_domain import ToyTask

    loss = ToyTask.loss
    calls = {"n": 0}

    def nan_after_a_while(self, model, batch):
        calls["n"] += 1
        value, outputs = loss(self, model, batch)
        return (value * float("nan") if calls["n"] >= 5 else value), outputs

    monkeypatch.setattr(ToyTask, "loss", nan_after_a_while)
    with pytest.raises(RuntimeError, match=r"non-finite loss at epoch 0, by step \d+; lower train.lr"):
        Trainer(ToyDomain(), recipe(epochs=2), run_dir=tmp_path / "run").fit()


def test_the_logged_training_loss_is_the_mean_over_the_epoch(tmp_path, monkeypatch):
    """The losses are summed on the device and read now and then: the epoch's mean must equal the per-batch
    one, whether or not a read happened inside the epoch."""
    import json

    from panformer.engine import trainer

    from .toy_domain import ToyTask

    seen: list[tuple[float, int]] = []
    loss = ToyTask.loss

    def recording(self, model, batch):
        value, outputs = loss(self, model, batch)
        seen.append((float(value), len(batch[1])))
        return value, outputs

    monkeypatch.setattr(ToyTask, "loss", recording)
    for read_every in (0.0, 1e9):  # every batch; only at the epoch's end
        seen.clear()
        monkeypatch.setattr(trainer, "LOSS_READ_SECONDS", read_every)
        Trainer(ToyDomain(), recipe(epochs=1), run_dir=tmp_path / f"run{read_every}").fit()
        record = json.loads((tmp_path / f"run{read_every}" / "log.jsonl").read_text().splitlines()[0])
        train_rows = seen[:8]  # 57 rows in batches of 8; validation's losses are not the training loss
        expected = sum(v * n for v, n in train_rows) / sum(n for _, n in train_rows)
        assert record["train_loss"] == pytest.approx(expected, rel=1e-6)
