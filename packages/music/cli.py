"""`panformer-music`: the engine's CLI contract; `predict` (alias `generate`) writes MIDI, and
`evaluate --checkpoint` adds musical metrics and sampling speed to the per-field NLL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, load_model, user_errors_exit_2
from panformer.engine.errors import UserError
from panformer.engine.trainer import evaluate_model, select_device
from panformer.music.domain import MusicDomain

domain = MusicDomain()


@user_errors_exit_2
def predict(
    output: Annotated[Path, typer.Option(help="the generated .mid file")],
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    input: Annotated[Path | None, typer.Option("--input", "--prompt", help="a .mid file to continue")] = None,
    bars: Annotated[int | None, typer.Option(help="bars to generate (after the prompt)")] = None,
    instruments: Annotated[str | None, typer.Option(help="comma-separated instruments, e.g. piano,violin,cello")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    temperature: Annotated[float | None, typer.Option(min=0, help="override every field's temperature")] = None,
    top_p: Annotated[float | None, typer.Option(min=0, max=1, help="override every field's nucleus mass")] = None,
    plot: Annotated[bool, typer.Option("--plot", help="also write a piano-roll PNG beside the output")] = False,
    audio: Annotated[bool, typer.Option("--audio", help="also write a WAV (needs a SoundFont)")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
) -> None:
    """Generate music as MIDI: unconditional, with --instruments, or continuing --prompt FILE.mid."""
    if input is not None and not input.exists():
        raise UserError(f"--prompt {input} does not exist")
    dev = select_device(device)
    loaded = load_model(domain, checkpoint, dev)
    written = loaded.task.predict(
        loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=input, output_path=output, device=dev,
        plot=plot, instruments=instruments, bars=bars, audio=audio, seed=seed, temperature=temperature, top_p=top_p,
    )
    for path in written:
        typer.echo(str(path))


app = build_cli(domain, predict=predict)
app.command(name="generate", help="Same as predict.")(predict)

# `evaluate --checkpoint` is the engine's plus the musical metrics; `--recipe --seeds` stays the engine's.
_engine_evaluate = next(c.callback for c in app.registered_commands if c.callback.__name__ == "evaluate")
app.registered_commands = [c for c in app.registered_commands if c.callback.__name__ != "evaluate"]


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
    plot: Annotated[Path | None, typer.Option(help="with --checkpoint: a piano roll of one generated song")] = None,
    samples: Annotated[int | None, typer.Option(min=0, help="songs generated for the musical metrics")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
) -> None:
    """Test NLL per field and perplexity; with --checkpoint also musical metrics and sampling speed."""
    if checkpoint is None or recipe is not None:
        _engine_evaluate(checkpoint=checkpoint, recipe=recipe, seeds=seeds, data=data, set_=set_, out=out,
                         json_=json_, plot=None, device=device)
        return
    dev = select_device(device)
    loaded = load_model(domain, checkpoint, dev)
    splits = loaded.task.load_splits(loaded.recipe, source=data or loaded.config.get("data_source"))
    metrics = evaluate_model(loaded.task, loaded.model, splits.test, loaded.info,
                             batch_size=loaded.recipe.train.batch_size, device=dev, precision=loaded.recipe.train.precision)
    if loaded.info["representation"] == "mmt":
        from panformer.music.evaluation import music_evaluation

        recipe_ = loaded.recipe
        if samples is not None:
            recipe_ = recipe_.model_copy(update={"generate": recipe_.generate.model_copy(update={"eval_samples": samples})})
        metrics |= music_evaluation(loaded.model, recipe_, loaded.info, splits.test.pieces, device=dev)
    if plot is not None:
        if plot.suffix != ".png":
            raise UserError(f"--plot {plot}: give a .png path")
        written = loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=None,
                                      output_path=plot.with_suffix(".mid"), device=dev, plot=True)
        typer.echo(f"plot: {written[-1]}", err=True)
    if json_:
        typer.echo(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in metrics.items()}))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>28}  {value:.4f}")


if __name__ == "__main__":
    app()
