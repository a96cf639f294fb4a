"""Shared helpers for the molecules tests: the CLI in a subprocess, small structure files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from panformer.molecules.structures import Structure, write_extxyz

# Small, MMFF-typable molecules (with H: 6 to 20 atoms) for fast labelling.
SMILES = ["CCO", "CC(=O)O", "c1ccccc1O", "CCN(C)C", "OCCO", "CC(C)=O", "NCC(=O)O", "c1ccncc1", "CCOC", "CS(C)=O"]


def cli(*args: str) -> subprocess.CompletedProcess:
    # One math thread per subprocess: on a shared 2-core box OpenMP spin-waiting costs more than it gains.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "panformer.molecules.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_smiles(path: Path, smiles: list[str]) -> Path:
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
    return path


def water(path: Path, *, energy: float | None = -1.0, forces: bool = True) -> Path:
    s = Structure(np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]),
                  energy=energy, forces=np.zeros((3, 3)) if forces else None, molecule="water", name="water")
    return write_extxyz(path, [s])
