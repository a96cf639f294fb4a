"""`panformer-speech`: the engine's CLI contract plus the speech verbs (`synth`, `score`).

`predict` is the engine's, extended with --num-speakers (checked against the checkpoint) and
--chunk-seconds (the length of the chunks long audio is separated in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, run_predict, user_errors_exit_2
from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.speech.domain import SeparationRecipe, SpeechDomain
from panformer.speech.scoring import SAMPLES_SOURCE, resolve_samples, score_folders
from panformer.speech.synth import CorpusSpec, build_corpus

domain = SpeechDomain()


@user_errors_exit_2
def predict(
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    input: Annotated[Path, typer.Option("--input", help="a .wav/.flac/.ogg file or a folder of them")],
    output: Annotated[Path, typer.Option(help="folder for <name>_spk<k>.wav, one file per speaker")],
    num_speakers: Annotated[int | None, typer.Option(help="speakers expected; must match the checkpoint")] = None,
    chunk_seconds: Annotated[float | None, typer.Option(min=0.5, help="chunk length for long audio")] = None,
    plot: Annotated[bool, typer.Option("--plot", help="also write waveform/spectrogram PNGs")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
) -> None:
    """Separate a file or folder of mixtures into one file per speaker (any rate/channels in, model rate out)."""
    if not input.exists():
        raise UserError(f"--input {input} does not exist")
    run_predict(domain, checkpoint=checkpoint, input_path=input, output_path=output, device=device,
                plot=plot, num_speakers=num_speakers, chunk_seconds=chunk_seconds)


app = build_cli(domain, predict=predict)


@app.command()
@user_errors_exit_2
def synth(
    recipe: Annotated[str, typer.Option(help="recipe whose data.corpus and data.cache_dir to build")] = "demo",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. data.cache_dir=/tmp/c")] = None,
) -> None:
    """Build (or reuse) the recipe's synthetic eSpeak NG corpus and say where it is."""
    loaded = load_recipe(SeparationRecipe, domain.name, recipe, overrides=set_ or [])
    assert isinstance(loaded, SeparationRecipe)
    spec = CorpusSpec(**loaded.data.corpus.model_dump(), sample_rate=loaded.data.sample_rate)
    manifest = build_corpus(Path(loaded.data.cache_dir), spec)
    counts = {split: 0 for split in ("train", "val", "test")}
    for entry in manifest["speakers"].values():
        counts[entry["split"]] += 1
    typer.echo(f"{loaded.data.cache_dir}: {len(manifest['speakers'])} speakers "
               f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), "
               f"{spec.utterances_per_speaker} utterances each")


@app.command()
@user_errors_exit_2
def score(
    estimates: Annotated[Path | None, typer.Option(
        help="folder of itemN_source<k>hat.wav or itemN_mix_spk<k>.wav [default: the libri2mix-samples folder]")] = None,
    references: Annotated[Path | None, typer.Option(
        help="flat folder: itemN_mix.wav and itemN_source<k>.wav [default: the libri2mix-samples folder]")] = None,
    num_speakers: Annotated[int, typer.Option(min=2, max=3)] = 2,
    sample_rate: Annotated[int, typer.Option(help="rate the signals are compared at")] = 8000,
    json_: Annotated[bool, typer.Option("--json", help="print the result as one JSON line last")] = False,
) -> None:
    """Score existing separations: SI-SDR(i) and SDR(i) per item and their means (best permutation).

    With no folders it scores MossFormer2's own published Libri2Mix separations (mean SI-SDRi 21.70 dB).
    """
    samples = None if estimates and references else Path(resolve_samples(SAMPLES_SOURCE))
    result = score_folders(estimates or samples, references or samples, num_speakers=num_speakers,
                           sample_rate=sample_rate)
    if json_:
        typer.echo(json.dumps(result))
        return
    for row in result["items"]:
        typer.echo(f"{row['item']:>10}  " + "  ".join(f"{k} {v:7.2f}" for k, v in row.items() if k != "item"))
    typer.echo(f"{'mean':>10}  " + "  ".join(f"{k} {v:7.2f}" for k, v in result["mean"].items())
               + f"   ({result['count']} items)")


if __name__ == "__main__":
    app()
