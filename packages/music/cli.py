"""`panformer-music`: the engine's CLI contract; `predict` (alias `generate`) writes MIDI, and
`evaluate --checkpoint` adds musical metrics and sampling speed (the task's `evaluation_extras`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, run_predict, user_errors_exit_2
from panformer.engine.errors import UserError
from panformer.music.domain import MusicDomain

domain = MusicDomain()


@user_errors_exit_2
def predict(
    output: Annotated[Path, typer.Option(help="the generated .mid file")],
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    input: Annotated[Path | None, typer.Option("--input", "--prompt", help="a .mid file to continue")] = None,
    bars: Annotated[int | None, typer.Option(help="bars to generate (after the prompt)")] = None,
    prompt_bars: Annotated[int | None, typer.Option(
        help="use the prompt's last N bars (default: all of it, or the most that fit the context)")] = None,
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
    run_predict(domain, checkpoint=checkpoint, input_path=input, output_path=output, device=device,
                plot=plot, instruments=instruments, bars=bars, prompt_bars=prompt_bars, audio=audio, seed=seed,
                temperature=temperature, top_p=top_p)


app = build_cli(domain, predict=predict)
app.command(name="generate", help="Same as predict.")(predict)

if __name__ == "__main__":
    app()
