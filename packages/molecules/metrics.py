"""Energy and force metrics, and the rotation errors of a model (its lack of exact symmetry).

Units are in the names: eV per molecule, meV per atom, eV/Å.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from panformer.engine.domain import Metrics


class EnergyForceMetrics(Metrics):
    """energy MAE (eV/molecule, meV/atom), force MAE (eV/Å, over components), force cosine (mean over
    atoms with a non-negligible reference force), and, when the outputs carry them, the energy change
    under a random rotation (meV/molecule) and the force equivariance error |F(Rx) - R F(x)| (eV/Å).

    Two trivial baselines come with them, so a number can be judged on its own: the energy MAE of the
    per-element reference energies alone (`baseline_energy_mae_eV`) and the force MAE of predicting
    zero forces (`baseline_force_mae_eV_A`)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def _add(self, key: str, total: Tensor | float, count: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(total)
        self.counts[key] = self.counts.get(key, 0) + count

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        valid = batch["valid"]
        atoms = valid.sum(1).clamp(min=1)
        error = (outputs["energy"].float() - batch["energy"]).abs()
        self._add("energy_mae_eV", error.sum(), len(error))
        self._add("energy_mae_meV_per_atom", (1000 * error / atoms).sum(), len(error))
        if "reference_energy" in outputs:
            baseline = (outputs["reference_energy"].float() - batch["energy"]).abs()
            self._add("baseline_energy_mae_eV", baseline.sum(), len(baseline))
        has_forces = batch["has_forces"]
        mask = valid & has_forces.unsqueeze(1)  # (B, N) atoms with reference forces
        if mask.any():
            predicted, reference = outputs["forces"].float()[mask], batch["forces"][mask]  # (A, 3)
            self._add("force_mae_eV_A", (predicted - reference).abs().sum(), predicted.numel())
            self._add("baseline_force_mae_eV_A", reference.abs().sum(), reference.numel())
            strong = reference.norm(dim=-1) > 1e-3
            cosine = torch.nn.functional.cosine_similarity(predicted[strong], reference[strong], dim=-1)
            self._add("force_cosine", cosine.sum(), int(strong.sum()))
        if "rotation_energy_change" in outputs:
            change = outputs["rotation_energy_change"]
            self._add("rotation_energy_change_meV", 1000 * change.sum(), len(change))
            self._add("equivariance_error_eV_A", outputs["equivariance_error"].sum(), int(valid.sum()))

    def compute(self) -> dict[str, Any]:
        return {key: self.sums[key] / max(self.counts[key], 1) for key in self.sums}
