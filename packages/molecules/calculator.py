"""An ASE calculator backed by a trained checkpoint, and geometry optimisation (`relax`) with it.

    from panformer.molecules.calculator import PanformerCalculator
    atoms.calc = PanformerCalculator("runs/molecules/demo-...")
    atoms.get_potential_energy(), atoms.get_forces()     # eV, eV/Å

Energies are rotation invariant and forces equivariant through the checkpoint's invariance mode (`frames`
unless its recipe says otherwise; `invariance=` overrides it, see `panformer.molecules.frames`).
The checkpoint is loaded through the engine (safetensors + JSON, never unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from panformer.engine.errors import UserError
from panformer.molecules.frames import Invariance, check_invariance, invariant_forward
from panformer.molecules.structures import Structure, read_structures, write_extxyz


class PanformerCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) from a Panformer molecules checkpoint (run folder or checkpoint folder)."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(
        self, checkpoint: str | Path, *, device: str = "cpu", invariance: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        from panformer.engine.cli import load_model
        from panformer.engine.trainer import select_device
        from panformer.molecules.domain import MoleculesDomain

        self.device = select_device(device)
        loaded = load_model(MoleculesDomain(), Path(checkpoint), self.device)
        self.model = loaded.model.eval()
        self.elements = set(loaded.info["elements"])
        self.invariance: Invariance = (check_invariance(invariance, where="PanformerCalculator(invariance=...)")
                                       if invariance is not None else loaded.task.invariance)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        numbers = np.asarray(self.atoms.numbers)
        unknown = set(numbers.tolist()) - self.elements
        if unknown:
            raise UserError(f"PanformerCalculator: element(s) {sorted(unknown)} were not in the training data")
        z = torch.as_tensor(numbers, dtype=torch.long, device=self.device)[None]
        pos = torch.as_tensor(self.atoms.positions, dtype=torch.float32, device=self.device)[None]
        valid = torch.ones_like(z, dtype=torch.bool)
        with torch.no_grad():
            energy, forces = invariant_forward(self.model, z, pos, valid, mode=self.invariance)
        self.results = {
            "energy": float(energy[0]),
            "free_energy": float(energy[0]),
            "forces": forces[0].double().cpu().numpy(),
        }


def relax_file(
    input_path: Path,
    *,
    checkpoint: Path,
    output: Path,
    trajectory: Path | None,
    fmax: float,
    steps: int,
    skip_bad: bool = False,
    device: str = "cpu",
    invariance: str | None = None,
) -> list[tuple[Path | None, str]]:
    """BFGS-optimise every structure of `input_path`; write the final structures (and every step).

    Returns (file written or None, one summary line) pairs for the CLI to print.
    """
    from ase.optimize import BFGS

    from panformer.molecules.domain import check_elements
    from panformer.molecules.structures import to_atoms

    for path in (output, trajectory):
        if path is not None and path.suffix.lower() not in (".extxyz", ".xyz"):
            raise UserError(f"{path}: relax writes extended XYZ; give an .extxyz path")
    result = read_structures(input_path, skip_bad=skip_bad)
    calculator = PanformerCalculator(checkpoint, device=device, invariance=invariance)
    check_elements(result.structures, sorted(calculator.elements), where=str(input_path))
    lines: list[tuple[Path | None, str]] = [(None, f"warning: skipped {m}") for m in result.skipped]
    finals: list[Structure] = []
    frames: list[Structure] = []
    for s in result.structures:
        atoms = to_atoms(Structure(s.numbers, s.positions.copy(), molecule=s.molecule, name=s.name))
        atoms.calc = calculator
        start_energy = atoms.get_potential_energy()
        optimizer = BFGS(atoms, logfile=None)

        def record(atoms=atoms, s=s) -> None:
            frames.append(Structure(atoms.numbers.copy(), atoms.positions.copy(), atoms.get_potential_energy(),
                                    atoms.get_forces().copy(), molecule=s.molecule, name=s.name))

        optimizer.attach(record, interval=1)
        converged = optimizer.run(fmax=fmax, steps=steps)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        finals.append(Structure(atoms.numbers.copy(), atoms.positions.copy(), energy, forces, molecule=s.molecule,
                                name=s.name, info={"converged": str(bool(converged))}))
        lines.append((None, f"{s.name}: {start_energy:.4f} -> {energy:.4f} eV in {optimizer.nsteps} steps, "
                            f"max force {np.linalg.norm(forces, axis=1).max():.4f} eV/Å"
                            f"{'' if converged else ' (not converged)'}"))
    written = [write_extxyz(output, finals)]
    if trajectory is not None:
        written.append(write_extxyz(trajectory, frames))
    return lines + [(path, "") for path in written]


__all__ = ["PanformerCalculator", "relax_file"]
