"""Shared helpers for the music tests: the CLI in a subprocess, one-line error checks, small MIDI files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from panformer.music.midi import write_midi
from panformer.music.representation import Note


def cli(*args: str) -> subprocess.CompletedProcess:
    # One math thread per subprocess: on a shared 2-core box OpenMP spin-waiting costs more than it gains.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "panformer.music.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


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
