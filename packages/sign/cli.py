"""`panformer-sign`: the engine's CLI contract plus `extract` (video -> landmark Parquet).

`predict` is the engine's, extended with --models (MediaPipe `.task` files, for video input).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, run_predict, user_errors_exit_2
from panformer.engine.errors import UserError
from panformer.sign.domain import SignDomain

domain = SignDomain()


@user_errors_exit_2
def predict(
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    input: Annotated[Path, typer.Option("--input", help="a landmark .parquet file, a video, or a folder of them")],
    output: Annotated[Path, typer.Option(help="CSV of the top-k signs per input: file, rank, sign, probability")],
    models: Annotated[Path | None, typer.Option(help="folder of MediaPipe .task files (video input)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
) -> None:
    """Classify landmark files or videos; write the top-k signs with probabilities."""
    if not input.exists():
        raise UserError(f"--input {input} does not exist")
    run_predict(domain, checkpoint=checkpoint, input_path=input, output_path=output, device=device,
                models_dir=models)


app = build_cli(domain, predict=predict)


@app.command()
@user_errors_exit_2
def extract(
    source: Annotated[Path, typer.Argument(help="a video file or a folder of videos")],
    output: Annotated[Path, typer.Option(help="folder for one <video>.parquet per video (ASL-Signs schema)")],
    models: Annotated[Path | None, typer.Option(
        help="folder with hand_landmarker.task and pose_landmarker_*.task, or holistic_landmarker.task "
        "[default: the official files, downloaded once into ~/.cache/panformer/mediapipe and checksummed]")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="videos processed in parallel [default: CPU cores]")] = None,
) -> None:
    """Extract MediaPipe hand and pose (or holistic) landmarks from every frame of each video."""
    from panformer.sign.extract import extract_all

    started = time.perf_counter()
    results = extract_all(source, output, models_dir=models, workers=workers)
    seconds = time.perf_counter() - started
    frames = 0
    for path, count, warnings in results:
        frames += count
        for line in warnings:
            typer.echo(f"warning: {line}", err=True)
        typer.echo(str(path))
    typer.echo(f"{len(results)} videos, {frames} frames in {seconds:.1f}s ({frames / seconds:.1f} frames/s)", err=True)


if __name__ == "__main__":
    app()
