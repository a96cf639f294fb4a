"""The CLI contract every domain follows: train, predict, evaluate, recipes, info (and demo).

`build_cli(domain)` returns a Typer app; a domain adds its own verbs to it. Exit codes: 0 success,
2 bad input or usage (one line on stderr naming the file or option and the fix), 1 internal error.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer
import yaml
from torch import nn

from panformer.engine import checkpoint as ckpt
from panformer.engine.config import Recipe, list_recipes, load_recipe, recipe_path, validate_recipe
from panformer.engine.domain import DemoResult, Domain, Task
from panformer.engine.errors import TrainingInterrupted, UserError
from panformer.engine.trainer import Trainer, evaluate_model, select_device

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_exit_2(fn: F) -> F:
    """Turn `UserError` into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except TrainingInterrupted as stop:
            typer.echo(str(stop), err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def default_run_dir(domain: str, recipe_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / domain / f"{recipe_name}-{stamp}"


@dataclass
class LoadedModel:
    model: nn.Module
    recipe: Recipe
    info: dict[str, Any]
    task: Task
    config: dict[str, Any]


def load_model(domain: Domain, checkpoint: Path, device: torch.device) -> LoadedModel:
    """Rebuild a trained model from a checkpoint folder (weights through safetensors, never pickle)."""
    saved = ckpt.load_checkpoint(checkpoint, domain=domain.name)
    recipe = validate_recipe(domain.recipe_type_for, saved.config["recipe"], source=str(saved.path))
    info = saved.config["info"]
    task = domain.task(recipe)
    model = task.build_model(recipe, info)
    model.load_state_dict(saved.weights)
    return LoadedModel(model.to(device).eval(), recipe, info, task, saved.config)


def train_run(
    domain: Domain,
    *,
    recipe: str | None,
    data: str | None,
    out: Path | None,
    overrides: list[str],
    resume: Path | None,
    device: str | None,
) -> Any:
    if resume is not None:
        if not (resume / "recipe.yaml").is_file():
            raise UserError(f"--resume {resume}: not a run folder (no recipe.yaml); give the folder `train` wrote")
        loaded = load_recipe(domain.recipe_type_for, domain.name, str(resume / "recipe.yaml"), overrides=overrides)
        run_dir = resume
    else:
        if recipe is None:
            choice = domain.default_recipe(data)
            if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
                typer.echo(f"no --recipe: using '{choice.name}' ({choice.reason})", err=True)
            recipe = choice.name
        loaded = load_recipe(domain.recipe_type_for, domain.name, recipe, overrides=overrides)
        run_dir = out or default_run_dir(domain.name, recipe_path(domain.name, recipe).stem)
        if (run_dir / "checkpoints").exists():
            raise UserError(f"--out {run_dir} already holds a run; pick another folder or use --resume {run_dir}")
    if device is not None:
        loaded.train.device = device
    return Trainer(domain, loaded, run_dir=run_dir).fit(source=data, resume=resume is not None)


def evaluate_seeds(
    domain: Domain, *, recipe: str, seeds: int, data: str | None, overrides: list[str], device: str, out: Path
) -> dict[str, Any]:
    """Train `recipe` once per seed (0..seeds-1); test metrics as {name: (mean, std)} over seeds."""
    runs = []
    for seed in range(seeds):
        runs.append(train_run(
            domain, recipe=recipe, data=data, out=out / f"seed-{seed}", overrides=[*overrides, f"train.seed={seed}"],
            resume=None, device=device,
        ))
    test = {key: [run.test_metrics[key] for run in runs] for key in runs[0].test_metrics}
    return {
        "seeds": seeds,
        "test": {key: (statistics.fmean(v), statistics.pstdev(v)) for key, v in test.items()},
        "seconds": [run.seconds for run in runs],
        "runs": [str(run.run_dir) for run in runs],
    }


def run_predict(
    domain: Domain, *, checkpoint: Path, input_path: Path | None, output_path: Path, device: str, **options: Any
) -> None:
    """`predict`'s body for every domain: load the checkpoint, let the task write its outputs (with the
    domain's own `options`), print the paths written."""
    dev = select_device(device)
    loaded = load_model(domain, checkpoint, dev)
    written = loaded.task.predict(
        loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=input_path, output_path=output_path,
        device=dev, **options,
    )
    for path in written:
        typer.echo(str(path))


def build_cli(domain: Domain, *, predict: Callable[..., None] | None = None) -> typer.Typer:
    """The contract's commands for `domain`. A domain whose `predict` takes more options passes its
    own command function (same core options, plus its own) as `predict`."""
    app = typer.Typer(
        name=f"panformer-{domain.name}",
        help=f"Panformer {domain.name}: train, predict, evaluate.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.command()
    @user_errors_exit_2
    def train(
        recipe: Annotated[str | None, typer.Option(
            help="recipe name (see `recipes`) or a .yaml path; default: the one the kind of --data implies")] = None,
        data: Annotated[str | None, typer.Option(help="data source; defaults to the recipe's")] = None,
        out: Annotated[Path | None, typer.Option(help="run folder (default runs/<domain>/<recipe>-<time>)")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. train.lr=3e-4")] = None,
        resume: Annotated[Path | None, typer.Option(help="continue an interrupted run folder")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = None,
    ) -> None:
        """Train a model from a recipe and write a run folder (checkpoints, log, metrics)."""
        train_run(domain, recipe=recipe, data=data, out=out, overrides=set_ or [], resume=resume, device=device)

    @app.command()
    @user_errors_exit_2
    def evaluate(
        checkpoint: Annotated[Path | None, typer.Option(help="run folder or checkpoint folder")] = None,
        recipe: Annotated[str | None, typer.Option(help="with --seeds: train this recipe per seed")] = None,
        seeds: Annotated[int, typer.Option(min=1, help="with --recipe: seeds to train; reports mean ± std")] = 1,
        data: Annotated[str | None, typer.Option(help="data source; defaults to the one trained on")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="recipe override (with --recipe)")] = None,
        out: Annotated[Path | None, typer.Option(help="folder for the seed runs (with --recipe)")] = None,
        json_: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON line last")] = False,
        plot: Annotated[Path | None, typer.Option(help="with --checkpoint: write the task's plot (PNG)")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
    ) -> None:
        """Score a checkpoint on the test split, or train a recipe over --seeds N and report mean ± std."""
        if (checkpoint is None) == (recipe is None):
            raise UserError("evaluate needs either --checkpoint DIR or --recipe NAME (with --seeds N)")
        if checkpoint is not None:
            dev = select_device(device)
            loaded = load_model(domain, checkpoint, dev)
            # Default: the data the model was trained on (train's --data), else the recipe's source.
            source = data or loaded.config.get("data_source")
            splits = loaded.task.load_splits(loaded.recipe, source=source)
            metrics = evaluate_model(
                loaded.task, loaded.model, splits.test, loaded.info, batch_size=loaded.recipe.train.batch_size,
                device=dev, precision=loaded.recipe.train.precision, metrics=loaded.task.test_metrics(loaded.info),
            )
            metrics |= loaded.task.evaluation_extras(
                loaded.model, recipe=loaded.recipe, info=loaded.info, splits=splits, device=dev
            )
            if plot is not None:
                if plot.suffix != ".png":
                    raise UserError(f"--plot {plot}: give a .png path")
                written = loaded.task.evaluation_plot(
                    loaded.model, splits.test, loaded.info, path=plot, batch_size=loaded.recipe.train.batch_size,
                    device=dev,
                )
                if written is None:
                    raise UserError(f"--plot: the {domain.name} task has no evaluation plot")
                typer.echo(f"plot: {written}", err=True)
            if json_:
                typer.echo(json.dumps({k: v if math.isfinite(v) else None for k, v in metrics.items()}))
            else:
                for key, value in metrics.items():
                    typer.echo(f"{key:>16}  {value:.4f}")
            return
        summary = evaluate_seeds(
            domain, recipe=recipe, seeds=seeds, data=data, overrides=set_ or [], device=device,
            out=out or default_run_dir(domain.name, f"{Path(recipe).stem}-seeds"),
        )
        if json_:
            typer.echo(json.dumps(summary))
        else:
            for key, (mean, std) in summary["test"].items():
                typer.echo(f"{key:>16}  {mean:.4f} ± {std:.4f}   (test, {seeds} seeds)")

    @user_errors_exit_2
    def default_predict(
        checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
        input: Annotated[Path, typer.Option("--input", help="file to predict on")],
        output: Annotated[Path, typer.Option(help="where to write predictions")],
        plot: Annotated[bool, typer.Option("--plot", help="also write PNG plots beside the output")] = False,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
    ) -> None:
        """Predict on new data and write the results."""
        if not input.exists():
            raise UserError(f"--input {input} does not exist")
        run_predict(domain, checkpoint=checkpoint, input_path=input, output_path=output, device=device, plot=plot)

    app.command(name="predict")(predict or default_predict)

    @app.command()
    @user_errors_exit_2
    def recipes() -> None:
        """List this domain's recipes, one line each."""
        for name, path in list_recipes(domain.name).items():
            try:
                description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except yaml.YAMLError:
                description = "(not valid YAML)"
            typer.echo(f"{name:<20} {description}")

    @app.command()
    @user_errors_exit_2
    def info(checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")]) -> None:
        """Describe a checkpoint: domain, recipe, data, metrics, parameters."""
        saved = ckpt.load_checkpoint(checkpoint, domain=domain.name)
        n_params = sum(t.numel() for t in saved.weights.values())
        cfg = saved.config
        typer.echo(f"checkpoint   {saved.path}")
        typer.echo(f"domain       {cfg['domain']}   panformer {cfg['panformer_version']}   torch {cfg['torch_version']}")
        typer.echo(f"created      {cfg['created']}   epoch {cfg.get('epoch')}   step {cfg.get('step')}")
        typer.echo(f"data         {cfg['data_fingerprint']}")
        typer.echo(f"tensors      {len(saved.weights)} ({n_params:,} values)")
        for key, value in (cfg.get("val_metrics") or {}).items():
            typer.echo(f"val {key:<8} {value:.4f}")
        typer.echo("recipe:")
        typer.echo(yaml.safe_dump(cfg["recipe"], sort_keys=False).rstrip())

    @app.command()
    @user_errors_exit_2
    def demo(out: Annotated[Path, typer.Option(help="folder for the demo run")] = Path("runs/demo")) -> None:
        """Train the `demo` recipe on embedded data, then evaluate and predict."""
        result, seconds = run_demo(domain, out / domain.name)
        typer.echo(f"{domain.name}: {result.metric} {result.value:.4f} in {seconds:.0f}s")

    return app


def run_demo(domain: Domain, folder: Path) -> tuple[DemoResult, float]:
    """The `demo` recipe end to end: train, evaluate on test, predict on a demo input."""
    started = time.perf_counter()
    run_dir = folder / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    recipe = load_recipe(domain.recipe_type_for, domain.name, "demo")
    result = Trainer(domain, recipe, run_dir=run_dir).fit()
    device = select_device(recipe.train.device)
    loaded = load_model(domain, run_dir, device)
    task = loaded.task
    input_path = task.demo_input(loaded.recipe, loaded.info, folder)
    written = task.predict(
        loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=input_path,
        output_path=folder / task.demo_output_name, device=device, plot=True,
    )
    seconds = time.perf_counter() - started
    metric = task.monitor
    return DemoResult(metric=f"test {metric}", value=result.test_metrics[metric],
                      outputs=[run_dir / "metrics.json", *written]), seconds

