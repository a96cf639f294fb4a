"""Units. Everything inside Panformer molecules is eV (energy), Å (length) and eV/Å (force).

Files name their units; readers convert on the way in, so a model never sees kcal/mol.
"""

from __future__ import annotations

from panformer.engine.errors import UserError

KCAL_PER_MOL_IN_EV = 0.0433641  # 1 kcal/mol = 0.0433641 eV (per molecule)
KJ_PER_MOL_IN_EV = 0.0103643  # 1 kJ/mol = 0.0103643 eV
HARTREE_IN_EV = 27.211386

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": KCAL_PER_MOL_IN_EV,
    "kJ/mol": KJ_PER_MOL_IN_EV,
    "Hartree": HARTREE_IN_EV,
}


def energy_factor(unit: str) -> float:
    """eV per `unit` (forces in `unit`/Å use the same factor)."""
    if unit not in ENERGY_UNITS:
        raise UserError(f"unknown energy unit {unit!r}; use one of {', '.join(ENERGY_UNITS)}")
    return ENERGY_UNITS[unit]
