"""Shared helpers for the molecules tests: the CLI in a subprocess, small structure files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panformer.molecules.structures import Structure, write_extxyz
from tests.cli import cli_of

# Small, MMFF-typable molecules (with H: 6 to 20 atoms) for fast labelling.
SMILES = ["CCO", "CC(=O)O", "c1ccccc1O", "CCN(C)C", "OCCO", "CC(C)=O", "NCC(=O)O", "c1ccncc1", "CCOC", "CS(C)=O"]


cli = cli_of("panformer.molecules.cli")



def write_smiles(path: Path, smiles: list[str]) -> Path:
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
    return path


def water(path: Path, *, energy: float | None = -1.0, forces: bool = True) -> Path:
    s = Structure(np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]),
                  energy=energy, forces=np.zeros((3, 3)) if forces else None, molecule="water", name="water")
    return write_extxyz(path, [s])
