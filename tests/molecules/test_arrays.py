""".npz structure archives (numpy only), learning-curve splits, and training without RDKit or ASE."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from panformer.engine.errors import UserError
from panformer.molecules.domain import drop_force_outliers, molecule_split
from panformer.molecules.label import LabelOptions, label_file, label_molecule
from panformer.molecules.structures import Structure, read_structures, write_npz
from tests.molecules.helpers import write_smiles

REPO = Path(__file__).resolve().parents[2]


def _structures(count: int = 6) -> list[Structure]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        n = 3 + i % 4
        forces = rng.normal(size=(n, 3)) if i != 2 else None  # one structure without forces
        out.append(Structure(rng.integers(1, 10, size=n), rng.normal(size=(n, 3)), energy=-1.5 * i,
                             forces=forces, molecule=f"m{i // 2}", name=f"m{i // 2}-c{i % 2}",
                             info={"smiles": "C" * (i + 1)}))
    return out


def test_npz_round_trip_keeps_energies_forces_and_names(tmp_path):
    structures = _structures()
    back = read_structures(write_npz(tmp_path / "set.npz", structures)).structures
    assert [s.name for s in back] == [s.name for s in structures]
    assert [s.molecule for s in back] == [s.molecule for s in structures]
    assert back[2].forces is None and back[3].info == {"smiles": "CCCC"}
    for a, b in zip(structures, back, strict=True):
        assert np.array_equal(a.numbers, b.numbers) and b.energy == a.energy
        assert np.allclose(a.positions, b.positions, atol=1e-6)
        if a.forces is not None:
            assert np.allclose(a.forces, b.forces, atol=1e-6)


def test_bad_npz_files_are_one_line_user_errors(tmp_path):
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not a zip archive")
    with pytest.raises(UserError, match=r"cannot read it as a \.npz archive"):
        read_structures(damaged)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(UserError, match="not a Panformer structure archive") as err:
        read_structures(foreign)
    assert "\n" not in str(err.value)


def test_label_writes_npz(tmp_path):
    source = write_smiles(tmp_path / "in.smi", ["CCO", "OCCO"])
    summary = label_file(source, tmp_path / "out.npz", options=LabelOptions(conformers=2), workers=1,
                         show_progress=False)
    structures = [s for job in [("mol0", "CCO"), ("mol1", "OCCO")]
                  for s in label_molecule((*job, LabelOptions(conformers=2)))[0]]
    back = read_structures(tmp_path / "out.npz").structures
    assert len(back) == len(structures) == summary.structures == 4 and summary.molecules == 2
    assert back[1].energy == pytest.approx(structures[1].energy)
    assert np.allclose(back[1].forces, structures[1].forces, atol=1e-5)


def test_learning_curve_training_sets_are_nested_and_held_out_sets_fixed():
    structures = [Structure(np.array([1]), np.zeros((1, 3)), 0.0, molecule=f"m{i % 40}") for i in range(120)]
    full = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0)
    small = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_molecules=5)
    larger = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_molecules=12)

    def molecules(group: list[Structure]) -> set[str]:
        return {s.molecule for s in group}

    assert len(molecules(small["train"])) == 5 and len(small["train"]) == 15  # every conformer of each
    assert molecules(small["train"]) < molecules(larger["train"]) < molecules(full["train"])
    for split in ("val", "test"):
        assert molecules(small[split]) == molecules(full[split])
    with pytest.raises(UserError, match="train_molecules=99"):
        molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_molecules=99)


def test_learning_curve_sizes_in_structures_take_whole_molecules_until_enough():
    # Molecules with 1, 2 or 3 conformers: a size in structures must not cut a molecule's conformers apart.
    structures = [Structure(np.array([1]), np.zeros((1, 3)), 0.0, molecule=f"m{i}")
                  for i in range(60) for _ in range(1 + i % 3)]
    full = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0)
    by_molecules = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_molecules=9)
    previous: set[str] = set()
    for size in (1, 10, 25, len(full["train"])):
        split = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_structures=size)
        names = {s.molecule for s in split["train"]}
        fewer = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0,
                               train_molecules=len(names) - 1)["train"] if len(names) > 1 else []
        assert len(split["train"]) >= size > len(fewer)  # the fewest first molecules that hold `size`
        assert previous <= names and previous != names  # nested, in the same order as train_molecules
        assert [s.name for s in split["val"]] == [s.name for s in full["val"]]
        assert [s.name for s in split["test"]] == [s.name for s in full["test"]]
        previous = names
    assert previous == {s.molecule for s in full["train"]}
    first_nine = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0,
                                train_structures=len(by_molecules["train"]))["train"]
    assert {s.molecule for s in first_nine} == {s.molecule for s in by_molecules["train"]}
    with pytest.raises(UserError, match="train_structures=999"):
        molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_structures=999)
    with pytest.raises(UserError, match="not both"):
        molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0, train_molecules=3,
                       train_structures=5)


BLOCKED_TRAINING = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"rdkit", "ase"}:
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Block())
    from pathlib import Path
    from panformer.engine.config import load_recipe
    from panformer.engine.trainer import Trainer
    from panformer.molecules.domain import MoleculeRecipe, MoleculesDomain
    recipe = load_recipe(MoleculeRecipe, "molecules", "demo", overrides=[
        "data.source=" + sys.argv[1], "model.dim=16", "model.depth=1", "model.num_heads=2",
        "train.epochs=1", "train.batch_size=4", "train.device=cpu", "data.train_molecules=3"])
    result = Trainer(MoleculesDomain(), recipe, run_dir=Path(sys.argv[2])).fit()
    assert not any(m.split(".")[0] in {"rdkit", "ase"} for m in sys.modules)
    print("energy_mae_eV", result.test_metrics["energy_mae_eV"])
""")


def test_training_from_npz_needs_neither_rdkit_nor_ase(tmp_path):
    data = write_npz(tmp_path / "set.npz", [s for s in _structures(24) if s.forces is not None])
    done = subprocess.run([sys.executable, "-c", BLOCKED_TRAINING, str(data), str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "energy_mae_eV" in done.stdout


def test_force_outliers_are_dropped_and_reported(capsys):
    structures = _structures()
    structures[0].forces[1] = [0.0, 3e4, 0.0]  # a broken conformer, as ETKDG + MMFF94 sometimes gives
    kept = drop_force_outliers(structures, 50.0, where="set.npz")
    assert [s.name for s in kept] == [s.name for s in structures[1:]]
    assert "dropped 1 of 6 structures" in capsys.readouterr().err
    assert drop_force_outliers(structures, None, where="set.npz") == structures
    with pytest.raises(UserError, match="every structure"):
        drop_force_outliers(structures[:2], 1e-9, where="set.npz")
