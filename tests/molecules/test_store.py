"""Structure stores (memory-mapped .npy folders): the .npz's structures exactly, training reads them by index,
`label` appends chunks and resumes, and a damaged store file is a one-line error naming it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.engine.trainer import Trainer, make_loader
from panformer.molecules import label as label_module
from panformer.molecules.domain import (
    EnergyForceTask,
    MoleculeRecipe,
    MoleculesDomain,
    StructureDataset,
    collate,
)
from panformer.molecules.label import LabelOptions, label_file
from panformer.molecules.structures import (
    Structure,
    fingerprint,
    open_store,
    read_structures,
    write_npz,
    write_structures,
)
from tests.molecules.helpers import SMILES, write_smiles


def _structures(molecules: int = 12, conformers: int = 3) -> list[Structure]:
    """Conformers of small H/C/N/O molecules with energies and forces (one structure without forces)."""
    rng = np.random.default_rng(0)
    out = []
    for m in range(molecules):
        numbers = rng.choice([1, 1, 6, 7, 8], size=3 + m % 5)
        for c in range(conformers):
            n = len(numbers)
            forces = None if (m, c) == (1, 1) else rng.normal(size=(n, 3))
            out.append(Structure(numbers, rng.normal(scale=1.3, size=(n, 3)), energy=float(-3 * n + rng.normal()),
                                 forces=forces, molecule=f"molecule-{m}", name=f"molecule-{m}-c{c}",
                                 info={"smiles": "C" * (m + 1)}))
    return out


def _recipe(source: Path, *extra: str) -> MoleculeRecipe:
    return load_recipe(MoleculeRecipe, "molecules", "demo", overrides=[
        f"data.source={source}", "model.dim=16", "model.depth=1", "model.num_heads=2", "train.epochs=1",
        "train.batch_size=4", "train.device=cpu", *extra])


def test_store_round_trips_exactly_what_the_npz_gives(tmp_path):
    structures = _structures()
    from_npz = read_structures(write_npz(tmp_path / "set.npz", structures)).structures
    store = open_store(write_structures(tmp_path / "set.structures", structures))
    assert isinstance(store.columns["positions"], np.memmap)  # mapped, not read
    from_store = list(store)
    assert len(from_store) == len(from_npz) == len(structures)
    for a, b in zip(from_npz, from_store, strict=True):
        assert (a.molecule, a.name, a.energy, a.info) == (b.molecule, b.name, b.energy, b.info)
        assert a.numbers.dtype == b.numbers.dtype and np.array_equal(a.numbers, b.numbers)
        assert a.positions.dtype == b.positions.dtype and np.array_equal(a.positions, b.positions)
        assert (a.forces is None) == (b.forces is None)
        if a.forces is not None:
            assert np.array_equal(a.forces, b.forces)
    assert from_store[4].forces is None
    # The fingerprint recorded when writing is the one the .npz's structures give (resume works across both).
    assert store.fingerprint() == fingerprint(from_npz)
    meta = json.loads((tmp_path / "set.structures" / "store.json").read_text())
    assert meta["units"] == {"energy": "eV", "length": "Å", "forces": "eV/Å"}
    with pytest.raises(UserError, match=r"store\.json"):
        open_store(tmp_path / "set.structures", energy_unit="kcal/mol")


def test_training_splits_from_a_store_match_the_npz_and_read_by_index(tmp_path):
    structures = _structures()
    npz = write_npz(tmp_path / "set.npz", structures)
    store = write_structures(tmp_path / "set.structures", structures)
    task = EnergyForceTask()
    a = task.load_splits(_recipe(npz, "data.max_force=2.5"))
    b = task.load_splits(_recipe(store, "data.max_force=2.5"))
    assert a.info == {**b.info, "source": str(npz)} and a.fingerprint == b.fingerprint
    assert 0 < sum(a.info["structures"].values()) < len(structures)  # max_force dropped some
    for name in ("train", "val", "test"):
        assert [s.name for s in getattr(a, name).structures] == [s.name for s in getattr(b, name).structures]
    assert isinstance(b.train.source.columns["forces"], np.memmap)
    # A DataLoader worker gets the path and reopens the maps, not a copy of the data.
    assert len(pickle.dumps(b.train)) < 2000
    assert pickle.loads(pickle.dumps(b.train))[0].name == b.train[0].name
    # Streamed statistics equal those of the same structures in memory.
    models = []
    for splits in (a, b):
        model = task.build_model(_recipe(npz), splits.info)
        task.fit_statistics(model, splits)
        models.append(model)
    for key in ("element_energy", "scale", "energy_norm"):
        assert np.allclose(getattr(models[0], key).numpy(), getattr(models[1], key).numpy(), rtol=1e-6)


def test_the_loader_slices_whole_batches_equal_to_collating_the_structures(tmp_path):
    structures = _structures()
    store = StructureDataset(open_store(write_structures(tmp_path / "set.structures", structures)))
    in_memory = StructureDataset(structures)
    task = EnergyForceTask()
    positions = [4, 0, 17, 3, 9]  # unsorted, sizes 3 to 7, number 4 without forces
    for dataset in (store, in_memory):
        expected = collate([dataset[i] for i in positions])
        batch = dataset.__getitems__(positions)
        assert batch.keys() == expected.keys()
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
        assert not batch["has_forces"][0] and batch["has_forces"][1:].all()
        loaded = next(iter(make_loader(task, dataset.subset(np.array(positions)), batch_size=5, shuffle=False)))
        assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_train_reads_a_store(tmp_path):
    store = write_structures(tmp_path / "set.structures", _structures())
    result = Trainer(MoleculesDomain(), _recipe(store), run_dir=tmp_path / "run").fit()
    assert np.isfinite(result.test_metrics["energy_mae_eV"])


def test_interrupted_label_resumes_without_redoing_finished_molecules(tmp_path, monkeypatch):
    source = write_smiles(tmp_path / "in.smi", SMILES[:7])
    options = LabelOptions(conformers=2)
    reference = label_file(source, tmp_path / "whole.structures", options=options, workers=1, show_progress=False)
    real = label_module.label_molecule
    labelled: list[str] = []

    def interrupted(job):
        if len(labelled) == 5:
            raise KeyboardInterrupt  # Ctrl-C while labelling the sixth molecule
        labelled.append(job[0])
        return real(job)

    output = tmp_path / "set.structures"
    monkeypatch.setattr(label_module, "label_molecule", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_file(source, output, options=options, workers=1, show_progress=False, chunk_molecules=2)
    assert not output.exists()
    partial = tmp_path / ".set.structures.partial"
    assert len(list(partial.glob("chunk-*.npz"))) == 2  # molecules 0-3 are done, 4 was lost with its chunk

    def counted(job):
        labelled.append(job[0])
        return real(job)

    labelled.clear()
    monkeypatch.setattr(label_module, "label_molecule", counted)
    summary = label_file(source, output, options=options, workers=1, show_progress=False, chunk_molecules=2)
    assert labelled == ["mol4", "mol5", "mol6"]
    assert summary == reference and not partial.exists()
    resumed, whole = open_store(output), open_store(tmp_path / "whole.structures")
    assert resumed.fingerprint() == whole.fingerprint()
    assert [s.name for s in resumed] == [s.name for s in whole]


def test_label_starts_afresh_when_the_options_changed(tmp_path, monkeypatch, capsys):
    source = write_smiles(tmp_path / "in.smi", SMILES[:3])
    partial = tmp_path / ".set.structures.partial"
    partial.mkdir()
    (partial / "job.json").write_text('{"jobs": "other"}\n')
    (partial / "chunk-000000.npz").write_bytes(b"from another run")
    summary = label_file(source, tmp_path / "set.structures", options=LabelOptions(conformers=1), workers=1,
                         show_progress=False)
    assert summary.structures == 3 and "starting afresh" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "remove", "json"])
def test_a_damaged_store_file_is_a_one_line_error_naming_it(tmp_path, damage):
    store = write_structures(tmp_path / "set.structures", _structures())
    victim = store / ("store.json" if damage == "json" else "positions.npy")
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(b"\x00" * len(data))
    elif damage == "remove":
        victim.unlink()
    else:
        victim.write_text(data.decode()[:20])
    with pytest.raises(UserError) as err:
        EnergyForceTask().load_splits(_recipe(store))
    message = str(err.value)
    assert str(victim) in message and "\n" not in message and "re-create" in message
