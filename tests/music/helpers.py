"""Shared helpers for the music tests: the CLI in a subprocess, one-line error checks, small MIDI files."""

from __future__ import annotations

from pathlib import Path

from panformer.music.midi import write_midi
from panformer.music.representation import Note
from tests.cli import cli_of

cli = cli_of("panformer.music.cli")



def grid_notes() -> list[Note]:
    """Two bars for violin, cello and drums, on the grid and with known durations."""
    notes = [Note(b, p, 60 + (b * 5 + p) % 12, d, "violin") for b in range(8) for p, d in ((0, 6), (6, 6))]
    notes += [Note(b, 0, 36 + b % 5, 12, "cello") for b in range(8)]
    notes += [Note(b, 3, 42, 1, "drums") for b in range(0, 8, 2)]
    notes += [Note(7, 0, 48, 48, "cello")]  # a held note of four beats
    return notes


def write_prompt(path: Path, beats: int = 4) -> Path:
    """The grid notes' pattern repeated every 8 beats, cut after `beats` beats."""
    notes = [n._replace(beat=n.beat + 8 * k) for k in range(beats // 8 + 1) for n in grid_notes()]
    return write_midi([n for n in notes if n.beat < beats], path)
