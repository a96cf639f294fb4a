"""The molecules domain: recipes, the energy-and-force task (splits by molecule, loss, metrics, predict).

Batches are padded: numbers (B, N) long (0 = padding), positions (B, N, 3) Å, valid (B, N) bool,
energy (B,) eV, forces (B, N, 3) eV/Å, has_forces (B,) bool.

Training data are `StructureArrays` columns (a `.structures` store memory-mapped, smaller files in memory):
splits, statistics and the fingerprint come from the per-structure columns and streamed passes, and each
structure is read when a batch asks for it, so memory does not grow with a store's size.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, RecipeChoice, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.plots import pyplot, save_png
from panformer.molecules.attention_distance import (
    MAX_STRUCTURES,
    attention_by_distance,
    has_attention,
    write_attention_distance,
)
from panformer.molecules.frames import Invariance, check_invariance, invariant_forward
from panformer.molecules.label import LabelOptions, label_file, nci_smiles_path
from panformer.molecules.metrics import EnergyForceMetrics
from panformer.molecules.model import (
    CoordinateTransformer,
    DistanceBiasOptions,
    EnergyModel,
    SchNetModel,
    random_rotations,
)
from panformer.molecules.structures import (
    MAX_Z,
    NPZ_SUFFIX,
    SDF_SUFFIXES,
    SMILES_SUFFIXES,
    STORE_SUFFIX,
    Structure,
    StructureArrays,
    fingerprint,
    open_store,
    read_structures,
    write_extxyz,
    write_structures,
)
from panformer.molecules.units import ENERGY_UNITS

# --- recipe --------------------------------------------------------------------------------------


class MoleculeData(StrictModel):
    source: str = Field(
        "nci",
        description="nci (RDKit's bundled NCI SMILES, labelled with ETKDG + MMFF94 and cached) or a structure "
        f"file: a {STORE_SUFFIX} store folder or .npz (from `label`; need neither RDKit nor ASE; a store is "
        "memory-mapped, for sets of any size), .extxyz/.xyz (ASE) or .sdf/.mol with energies",
    )
    cache_dir: str = Field("runs/data/molecules", description="where the labelled NCI set is cached")
    molecules: int = Field(200, ge=3, description="nci: the first N molecules of the list")
    conformers: int = Field(4, ge=1, description="nci: ETKDG conformers per molecule")
    mmff_steps: int = Field(0, ge=0, description="nci: MMFF relaxation steps after embedding (0: ETKDG geometry)")
    max_atoms: int = Field(40, ge=2, description="nci: larger molecules (with H) are skipped")
    rattle: float = Field(0.0, ge=0, description="nci: Gaussian displacement (Å) of every atom after relaxing")
    label_seed: int = 0
    energy_key: str | None = Field(None, description="SDF property holding the energy (default: known names)")
    energy_unit: str | None = Field(None, description=f"unit of energies in the file: {', '.join(ENERGY_UNITS)}")
    skip_bad: bool = Field(False, description="skip (and report) bad records instead of failing")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="fraction of molecules held out for validation")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="fraction of molecules held out for testing")
    max_force: float | None = Field(
        None, gt=0, description="drop structures with an atomic force above this (eV/Å): labelling outliers")
    train_molecules: int | None = Field(
        None, ge=1, description="learning curves: train on only the first N training molecules (a fixed random "
        "order, so smaller sets are subsets of larger ones); validation and test stay the same")
    train_structures: int | None = Field(
        None, ge=1, description="learning curves in structures: train on the first training molecules (the same "
        "fixed order as train_molecules) until they hold at least N structures; not with train_molecules")


class LossConfig(StrictModel):
    """Energy errors are divided by the training set's residual-energy std per molecule, force errors by its
    force RMS, so both terms start near one and the weights say what matters."""

    energy_weight: float = Field(1.0, ge=0)
    force_weight: float = Field(10.0, ge=0)
    energy_loss: Literal["mse", "huber"] = Field(
        "mse", description="huber: quadratic within one std, linear beyond (strained conformers weigh less)")
    rotate: bool = Field(True, description="random rotation of each training structure (augmentation)")


class CoordFormerConfig(StrictModel):
    """The graph-free coordinate transformer."""

    name: Literal["coordformer"] = "coordformer"
    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    coordinate_embedding: Literal["fourier", "random-fourier", "mlp", "linear"] = Field(
        "fourier", description="fourier: per-axis sin/cos; random-fourier: sin/cos along random directions; "
        "mlp or linear on centred xyz")
    distance_bias: bool = Field(False, description="ablation: a learned distance-based attention bias")
    distance_rbf: int = Field(16, ge=2, description="distance bias: Gaussian radial functions")
    distance_cutoff: float = Field(8.0, gt=0, description="distance bias: the last radial centre (Å)")
    distance_hidden: int = Field(0, ge=0, description="distance bias: MLP width from radial functions to heads "
                                 "(0: linear)")
    forces: Literal["direct", "conservative"] = "direct"
    invariance: Invariance = Field(
        "frames", description="inference (predict, evaluate, the ASE calculator): frames (average over the 4 "
        "sign choices of the principal axes: exactly rotation invariant, 4x the cost), canonical (one signed "
        "principal-axes frame, 1x) or none (the raw model); training is unchanged (rotation augmentation)")
    loss: LossConfig = LossConfig()


class SchNetConfig(StrictModel):
    """torch-geometric's SchNet (forces always conservative)."""

    name: Literal["schnet"] = "schnet"
    hidden: int = Field(64, ge=8)
    filters: int = Field(64, ge=8)
    interactions: int = Field(3, ge=1)
    gaussians: int = Field(25, ge=2)
    cutoff: float = Field(5.0, gt=0)
    loss: LossConfig = LossConfig()


ModelConfig = Annotated[CoordFormerConfig | SchNetConfig, Field(discriminator="name")]


class MoleculeRecipe(Recipe):
    default_model_name = "coordformer"

    domain: Literal["molecules"] = "molecules"
    data: MoleculeData = MoleculeData()
    model: ModelConfig = CoordFormerConfig()


def build_model(cfg: CoordFormerConfig | SchNetConfig) -> EnergyModel:
    if isinstance(cfg, SchNetConfig):
        return SchNetModel(hidden=cfg.hidden, filters=cfg.filters, interactions=cfg.interactions,
                           gaussians=cfg.gaussians, cutoff=cfg.cutoff)
    bias = DistanceBiasOptions(num_rbf=cfg.distance_rbf, cutoff=cfg.distance_cutoff, hidden=cfg.distance_hidden)
    return CoordinateTransformer(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                                 coordinate_embedding=cfg.coordinate_embedding,
                                 distance_bias=bias if cfg.distance_bias else False,
                                 forces=cfg.forces)


# --- data ----------------------------------------------------------------------------------------


class StructureDataset(Dataset):
    """Structures `indices` (default: all) of `source`, each read when asked for (a list is put in columns)."""

    def __init__(self, source: Sequence[Structure] | StructureArrays, indices: np.ndarray | None = None) -> None:
        self.source = source if isinstance(source, StructureArrays) else StructureArrays.from_structures(source)
        self.indices = np.arange(len(self.source)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Structure:
        return self.source[int(self.indices[index])]

    def __getitems__(self, positions: list[int]) -> dict[str, Tensor]:
        """A whole batch (the DataLoader asks for one at a time): `collate`'s padded batch, sliced straight from
        the columns (no Structure objects: ~10x faster, so loading keeps up with a GPU without workers)."""
        return padded_batch(self.source, self.indices[np.asarray(positions, dtype=np.int64)])

    @property
    def structures(self) -> list[Structure]:
        """Every structure, read into memory (evaluation and plots; training reads them one at a time)."""
        return [self[i] for i in range(len(self))]

    def subset(self, positions: np.ndarray) -> StructureDataset:
        return StructureDataset(self.source, self.indices[positions])

    def column(self, name: str) -> np.ndarray:
        """A per-structure column (`StructureArrays.columns`) for these structures, (len(self),)."""
        return np.asarray(self.source.columns[name][self.indices])

    def fingerprint(self) -> str:
        """The same as `fingerprint(self.structures)`, from the store's record when it holds all of it."""
        if len(self.indices) == len(self.source) and (self.indices == np.arange(len(self.source))).all():
            return self.source.fingerprint()
        return fingerprint(self[i] for i in range(len(self)))

    def atom_blocks(self, *, block: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Streams of `block` structures: (a,) the position in the block each atom belongs to, (a,) numbers
        and (a, 3) forces (NaN rows: none) of those structures' atoms; one block in memory at a time."""
        columns = self.source.columns
        for start in range(0, len(self.indices), block):
            rows, owner = self.source.atom_rows(self.indices[start:start + block])
            yield owner, np.asarray(columns["numbers"][rows]), np.asarray(columns["forces"][rows], dtype=np.float64)


def collate(structures: list[Structure]) -> dict[str, Tensor]:
    """Pad a list of structures to the largest one (see the module docstring for the keys)."""
    size, width = len(structures), max(len(s) for s in structures)
    numbers = torch.zeros(size, width, dtype=torch.long)
    positions = torch.zeros(size, width, 3)
    forces = torch.zeros(size, width, 3)
    energy = torch.zeros(size)
    has_forces = torch.zeros(size, dtype=torch.bool)
    for i, s in enumerate(structures):
        n = len(s)
        numbers[i, :n] = torch.from_numpy(s.numbers)
        positions[i, :n] = torch.from_numpy(s.positions)
        if s.forces is not None:
            forces[i, :n] = torch.from_numpy(s.forces)
            has_forces[i] = True
        energy[i] = s.energy if s.energy is not None else float("nan")
    return {"numbers": numbers, "positions": positions, "valid": numbers > 0, "energy": energy,
            "forces": forces, "has_forces": has_forces}


def padded_batch(source: StructureArrays, indices: np.ndarray) -> dict[str, Tensor]:
    """The same batch as `collate([source[i] for i in indices])`, read from the columns at once."""
    columns = source.columns
    rows, owner = source.atom_rows(indices)
    counts = source.counts[indices]
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # each atom's place in its structure
    forces = np.asarray(columns["forces"][rows], dtype=np.float32)
    has_forces = np.zeros(len(indices), dtype=bool)
    has_forces[owner[~np.isnan(forces).all(1)]] = True  # a structure without forces has NaN rows only
    shape = (len(indices), int(counts.max()))
    numbers = torch.zeros(shape, dtype=torch.long)
    numbers[owner, slot] = torch.from_numpy(np.asarray(columns["numbers"][rows], dtype=np.int64))
    positions = torch.zeros(*shape, 3)
    positions[owner, slot] = torch.from_numpy(np.asarray(columns["positions"][rows], dtype=np.float32))
    padded_forces = torch.zeros(*shape, 3)
    padded_forces[owner, slot] = torch.from_numpy(np.where(has_forces[owner, None], forces, 0.0).astype(np.float32))
    return {"numbers": numbers, "positions": positions, "valid": numbers > 0,
            "energy": torch.from_numpy(np.asarray(columns["energy"][indices], dtype=np.float32)),
            "forces": padded_forces, "has_forces": torch.from_numpy(has_forces)}


def nci_dataset(data: MoleculeData) -> Path:
    """The labelled NCI set (cached): the first `data.molecules` SMILES of RDKit's NCI list."""
    options = LabelOptions(conformers=data.conformers, mmff_steps=data.mmff_steps, max_atoms=data.max_atoms,
                           rattle=data.rattle, seed=data.label_seed)
    name = (f"nci-v2-{data.molecules}m-{data.conformers}c-{data.mmff_steps}s-{data.max_atoms}a-"
            f"{data.rattle:g}r-seed{data.label_seed}.extxyz")
    path = Path(data.cache_dir) / name
    if not path.is_file():
        summary = label_file(nci_smiles_path(), path, options=options, limit=data.molecules,
                             workers=2, show_progress=True)
        print(f"labelled {path} ({len(summary.skipped)} molecules skipped)", file=sys.stderr)
    return path


def load_structures(data: MoleculeData, source: str) -> StructureDataset:
    """The usable structures of `source`: a store memory-mapped, other files read whole (they are small)."""
    path = nci_dataset(data) if source == "nci" else Path(source)
    if path.is_dir():
        dataset = StructureDataset(open_store(path, energy_unit=data.energy_unit))
    else:
        result = read_structures(path, skip_bad=data.skip_bad, energy_key=data.energy_key,
                                 energy_unit=data.energy_unit)
        for message in result.skipped:
            print(f"warning: skipped {message}", file=sys.stderr)
        if result.skipped:
            print(f"warning: {len(result.skipped)} bad records skipped", file=sys.stderr)
        dataset = StructureDataset(result.structures)
    if data.max_force is None:
        return dataset
    return dataset.subset(below_max_force(dataset.column("max_force"), data.max_force, where=str(path)))


def drop_force_outliers(structures: list[Structure], max_force: float | None, *, where: str) -> list[Structure]:
    """Structures whose largest atomic force (eV/Å) is at most `max_force` (None: all of them)."""
    if max_force is None:
        return structures
    largest = [np.nan if s.forces is None else np.linalg.norm(s.forces, axis=1).max() for s in structures]
    return [structures[i] for i in below_max_force(np.array(largest), max_force, where=where)]


def below_max_force(largest: np.ndarray, max_force: float, *, where: str) -> np.ndarray:
    """Positions of the structures whose largest atomic force `largest` (S,) eV/Å (NaN: no forces) is at most
    `max_force`, reporting the others.

    A few ETKDG conformers get MMFF94 forces of 10^2-10^5 eV/Å (typical ones stay below ~10); one such
    structure inflates the force scale a hundredfold and swamps the force loss and the force MAE.
    """
    kept = np.flatnonzero(~(largest > max_force))  # NaN (no forces) is kept
    if len(kept) < len(largest):
        print(f"warning: {where}: dropped {len(largest) - len(kept)} of {len(largest)} structures with a "
              f"force above data.max_force={max_force:g} eV/Å", file=sys.stderr)
    if not len(kept):
        raise UserError(f"{where}: every structure has a force above data.max_force={max_force:g} eV/Å; raise it")
    return kept


def molecule_split(
    structures: list[Structure], *, val_fraction: float, test_fraction: float, seed: int,
    train_molecules: int | None = None, train_structures: int | None = None,
) -> dict[str, list[Structure]]:
    """`split_by_molecule` of a list of structures: the structures of each split."""
    groups = split_by_molecule(np.array([s.molecule for s in structures], dtype=str), val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed, train_molecules=train_molecules,
                               train_structures=train_structures)
    return {name: [structures[i] for i in positions] for name, positions in groups.items()}


def split_by_molecule(
    molecule: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int,
    train_molecules: int | None = None, train_structures: int | None = None,
) -> dict[str, np.ndarray]:
    """Split by molecule: every conformer of a molecule lands in the same split. `molecule` (S,) names each
    structure's molecule; returns the positions of each split's structures, in order.

    `train_molecules` keeps only that many training molecules (the first of a seeded shuffle: nested
    subsets for learning curves); validation and test do not depend on it. `train_structures` keeps the
    fewest of those first molecules that hold at least that many structures.
    """
    if train_molecules is not None and train_structures is not None:
        raise UserError("give data.train_molecules or data.train_structures, not both")
    # np.unique sorts by code point, as sorted() does: the shuffle, and so the split, is the same as for a list.
    unique, which = np.unique(molecule, return_inverse=True)
    molecules = unique.tolist()
    if len(molecules) < 3:
        raise UserError(f"only {len(molecules)} distinct molecules; a train/val/test split by molecule needs >= 3")
    order = list(range(len(molecules)))
    random.Random(seed).shuffle(order)  # the same permutation as shuffling the sorted names themselves
    n_val = max(1, round(val_fraction * len(molecules)))
    n_test = max(1, round(test_fraction * len(molecules)))
    if n_val + n_test >= len(molecules):
        raise UserError(f"{len(molecules)} molecules are too few for val_fraction/test_fraction; give more data")
    train = order[n_test + n_val:]
    if train_molecules is not None:
        if train_molecules > len(train):
            raise UserError(f"data.train_molecules={train_molecules} but only {len(train)} molecules are left for "
                            "training; give a smaller number or more data")
        train = train[:train_molecules]
    if train_structures is not None:
        held = np.cumsum(np.bincount(which.reshape(-1), minlength=len(molecules))[train])
        if train_structures > held[-1]:
            raise UserError(f"data.train_structures={train_structures} but the training molecules hold only "
                            f"{held[-1]} structures; give a smaller number or more data")
        train = train[:int(np.searchsorted(held, train_structures)) + 1]
    group = np.full(len(molecules), -1)  # per molecule: 0 train, 1 val, 2 test, -1 left out
    group[order[:n_test]], group[order[n_test:n_test + n_val]], group[train] = 2, 1, 0
    of_structure = group[which.reshape(-1)]
    return {name: np.flatnonzero(of_structure == code) for code, name in enumerate(("train", "val", "test"))}


def check_elements(structures: list[Structure], elements: list[int], *, where: str) -> None:
    """UserError naming the first record with an element the model was not trained on."""
    from ase.data import chemical_symbols

    known = set(elements)
    for s in structures:
        unknown = sorted(set(s.numbers.tolist()) - known)
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            trained = " ".join(chemical_symbols[z] for z in sorted(known))
            raise UserError(f"{where}: record {s.name} has element(s) {names} that the model never saw "
                            f"(trained on {trained}); remove the record or retrain")


# --- the task ------------------------------------------------------------------------------------


class EnergyForceTask(Task):
    monitor = "energy_mae_eV"
    monitor_mode = "min"
    demo_output_name = "predictions.extxyz"

    def __init__(self, *, loss: LossConfig | None = None, invariance: Invariance = "frames") -> None:
        self.loss_config = loss or LossConfig()
        self.invariance = invariance  # evaluation and predict; training runs the raw model

    def load_splits(self, recipe: MoleculeRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        structures = load_structures(data, source)
        missing = np.flatnonzero(np.isnan(structures.column("energy")))
        if len(missing):
            name = structures.column("name")[missing[0]]
            raise UserError(f"{source}: record {name} has no energy; training needs an energy per "
                            "structure (extxyz energy=, an SDF energy property or --set data.energy_key=NAME)")
        molecule = structures.column("molecule")
        groups = split_by_molecule(molecule, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                                   seed=data.label_seed, train_molecules=data.train_molecules,
                                   train_structures=data.train_structures)
        splits = {name: structures.subset(positions) for name, positions in groups.items()}
        seen = np.zeros(MAX_Z + 1, dtype=bool)
        for _, numbers, _ in splits["train"].atom_blocks():
            seen[numbers] = True
        return Splits(
            train=splits["train"], val=splits["val"], test=splits["test"],
            info={"source": source, "elements": np.flatnonzero(seen).tolist(),
                  "max_atoms": int(structures.column("atoms_per_structure").max()),
                  "molecules": {k: len(np.unique(molecule[v])) for k, v in groups.items()},
                  "structures": {k: len(v) for k, v in groups.items()}},
            fingerprint=structures.fingerprint(),
        )

    def build_model(self, recipe: MoleculeRecipe, info: dict[str, Any]) -> nn.Module:
        return build_model(recipe.model)

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        """Per-element reference energies by least squares of energy on element counts, and the scales: force
        RMS (eV/Å), the per-atom energy unit (eV) and the residual energy std per molecule (eV)."""
        train: StructureDataset = splits.train
        elements = splits.info["elements"]
        column = np.zeros(MAX_Z + 1, dtype=np.int64)
        column[elements] = np.arange(len(elements))
        energies = train.column("energy")  # (S,): a small index; the atoms are streamed, a block at a time

        def element_counts() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            """(s, E) element counts of each block of structures, their energies (s,) and forces (a, 3)."""
            start = 0
            for owner, numbers, forces in train.atom_blocks():
                size = int(owner[-1]) + 1  # every structure has atoms
                counts = np.bincount(owner * len(elements) + column[numbers], minlength=size * len(elements))
                yield counts.reshape(size, len(elements)).astype(np.float64), energies[start:start + size], forces
                start += size

        gram, moment = np.zeros((len(elements), len(elements))), np.zeros(len(elements))
        force_square, force_values = 0.0, 0
        for counts, energy, forces in element_counts():
            gram += counts.T @ counts
            moment += counts.T @ energy
            given = forces[~np.isnan(forces[:, 0])]
            force_square += float((given ** 2).sum())
            force_values += given.size
        # A small ridge keeps the fit defined when element counts are collinear (e.g. C and H in alkanes).
        weights = np.linalg.solve(gram + 1e-6 * np.eye(len(elements)), moment)
        residual = np.concatenate([energy - counts @ weights for counts, energy, _ in element_counts()])
        scale = float(np.sqrt(force_square / force_values)) if force_values else float(residual.std())
        model.element_energy.zero_()
        device = model.element_energy.device  # the trainer may have moved the model to a GPU already
        model.element_energy[torch.tensor(elements, device=device)] = torch.tensor(weights, dtype=torch.float32,
                                                                                  device=device)
        model.scale.fill_(max(scale, 1e-6))
        # The per-atom energy unit is force RMS x 1 Å, so that -dE/dx of order-one outputs is of order one.
        # (The per-atom residual std, ~0.1 eV here, was tried: energies then learned more slowly on validation.)
        model.energy_scale.fill_(max(scale, 1e-6))
        model.energy_norm.fill_(max(float(residual.std()), 1e-6))

    def collate(self, items: list[Any] | dict[str, Tensor]) -> dict[str, Tensor]:
        # A StructureDataset hands the DataLoader whole padded batches (`__getitems__`); lists are padded here.
        return items if isinstance(items, dict) else collate(items)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        core: EnergyModel = getattr(model, "module", model)  # DDP wraps the model
        cfg = self.loss_config
        positions, reference_forces = batch["positions"], batch["forces"]
        if model.training and cfg.rotate:
            rotation = random_rotations(len(positions), device=positions.device)
            positions = positions @ rotation.transpose(1, 2)
            reference_forces = reference_forces @ rotation.transpose(1, 2)
        if model.training:
            energy, forces = model(batch["numbers"], positions, batch["valid"])
        else:  # validation and test score what predict returns
            energy, forces = invariant_forward(core, batch["numbers"], positions, batch["valid"], mode=self.invariance)
        valid = batch["valid"]
        scale = core.scale
        energy_error = (energy - batch["energy"]) / core.energy_norm
        if cfg.energy_loss == "huber":
            energy_loss = F.huber_loss(energy_error, torch.zeros_like(energy_error), delta=1.0)
        else:
            energy_loss = (energy_error ** 2).mean()
        mask = (valid & batch["has_forces"].unsqueeze(1)).unsqueeze(-1)
        force_error = ((forces - reference_forces) / scale) ** 2 * mask
        force_loss = force_error.sum() / (3 * mask.sum()).clamp(min=1)
        loss = cfg.energy_weight * energy_loss + cfg.force_weight * force_loss
        reference_energy = (core.element_energy[batch["numbers"]] * valid).sum(1)
        outputs = {"energy": energy.detach(), "forces": forces.detach(), "reference_energy": reference_energy}
        if not model.training:
            outputs.update(rotation_errors(core, batch, energy, forces, invariance=self.invariance))
        return loss, outputs

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return EnergyForceMetrics()

    def predict(
        self,
        model: nn.Module,
        *,
        recipe: MoleculeRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
        skip_bad: bool = False,
        invariance: str | None = None,
    ) -> list[Path]:
        """Energies (eV) and forces (eV/Å) for every structure of `input_path`, as extended XYZ, .npz or CSV.
        `invariance` overrides the recipe's mode (see `panformer.molecules.frames`)."""
        if output_path.suffix.lower() not in (".extxyz", ".xyz", NPZ_SUFFIX, STORE_SUFFIX, ".csv"):
            raise UserError(f"--output {output_path}: give an .extxyz, .xyz, .npz, {STORE_SUFFIX} or .csv path")
        mode = check_invariance(invariance, where="--invariance") if invariance is not None else self.invariance
        result = read_structures(input_path, skip_bad=skip_bad, energy_key=recipe.data.energy_key,
                                 energy_unit=recipe.data.energy_unit)
        for message in result.skipped:
            print(f"warning: skipped {message}", file=sys.stderr)
        check_elements(result.structures, info["elements"], where=str(input_path))
        predicted = predict_structures(model, result.structures, device=device, invariance=mode)
        written = [write_structures(output_path, predicted)]
        if plot:
            written.append(parity_plot(result.structures, predicted, output_path.with_suffix(".png")))
        return written

    def evaluation_plot(
        self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path, batch_size: int,
        device: torch.device,
    ) -> Path:
        """The parity plot at `path`; for a model with attention also the attention-vs-distance analysis beside
        it (`PATH-attention-distance.png/.csv/.json`, see `panformer.molecules.attention_distance`)."""
        structures = dataset.structures
        predicted = predict_structures(model, structures, device=device, batch_size=batch_size,
                                       invariance=self.invariance)
        written = parity_plot(structures, predicted, path)
        if has_attention(model):
            stem = path.with_name(f"{path.stem}-attention-distance")
            extra = attention_distance_files(model, structures, stem=stem, device=device, batch_size=batch_size)
            print("attention vs distance: " + ", ".join(map(str, extra)), file=sys.stderr)
        return written

    def evaluation_extras(
        self, model: nn.Module, *, recipe: MoleculeRecipe, info: dict[str, Any], splits: Splits, device: torch.device
    ) -> dict[str, float]:
        """The invariance errors on the test split with the recipe's mode and without it, and what it costs."""
        structures = splits.test.structures
        batch_size = recipe.train.batch_size
        print(f"invariance: {self.invariance} (the `_off` keys: none)", file=sys.stderr)
        on = invariance_report(model, structures, invariance=self.invariance, device=device, batch_size=batch_size)
        off = invariance_report(model, structures, invariance="none", device=device, batch_size=batch_size)
        return on | {f"{key}_off": value for key, value in off.items()}

    def demo_input(self, recipe: MoleculeRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The test split (molecules the model never trained on), as extended XYZ."""
        return write_extxyz(workdir / "demo_input.extxyz", self.load_splits(recipe).test.structures)


def rotation_errors(
    model: EnergyModel, batch: dict[str, Tensor], energy: Tensor, forces: Tensor, *, invariance: Invariance
) -> dict[str, Tensor]:
    """Run the model (under `invariance`) on randomly rotated copies: |E(Rx) - E(x)| (B,) eV and sum over
    atoms of |F(Rx) - R F(x)| (B,) eV/Å. Rotations come from a fixed seed, so evaluation is repeatable."""
    positions = batch["positions"]
    generator = torch.Generator().manual_seed(1234)
    rotation = random_rotations(len(positions), generator=generator, device=positions.device)
    rotated_energy, rotated_forces = invariant_forward(
        model, batch["numbers"], positions @ rotation.transpose(1, 2), batch["valid"], mode=invariance)
    expected = forces @ rotation.transpose(1, 2)
    return {
        "rotation_energy_change": (rotated_energy - energy).abs().detach(),
        "equivariance_error": ((rotated_forces - expected).norm(dim=-1) * batch["valid"]).sum(1).detach(),
    }


def predict_structures(
    model: nn.Module, structures: list[Structure], *, device: torch.device, batch_size: int = 32,
    invariance: Invariance = "frames",
) -> list[Structure]:
    """Copies of `structures` carrying the model's energy and forces (made invariant by `invariance`)."""
    from panformer.engine.trainer import to_device

    model.eval()
    out = []
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        batch = to_device(collate(chunk), device)
        with torch.no_grad():
            energy, forces = invariant_forward(model, batch["numbers"], batch["positions"], batch["valid"],
                                               mode=invariance)
        for i, s in enumerate(chunk):
            out.append(Structure(s.numbers, s.positions, float(energy[i]), forces[i, :len(s)].double().cpu().numpy(),
                                 molecule=s.molecule, name=s.name, info=dict(s.info)))
    return out


def attention_distance_files(
    model: nn.Module, structures: list[Structure], *, stem: Path, device: torch.device, batch_size: int = 64,
) -> list[Path]:
    """The paper's attention analysis on the first `MAX_STRUCTURES` of `structures`: STEM.png, .csv, .json."""
    from panformer.engine.trainer import to_device

    sample = structures[:MAX_STRUCTURES]
    batches = (to_device(collate(sample[start:start + batch_size]), device)
               for start in range(0, len(sample), batch_size))
    return write_attention_distance(attention_by_distance(model, batches, device=device), stem)


def invariance_report(
    model: nn.Module, structures: list[Structure], *, invariance: Invariance, device: torch.device,
    batch_size: int = 32, rotations: int = 3,
) -> dict[str, float]:
    """How far predictions under `invariance` are from exact symmetry, over `rotations` random rotations of
    every structure (fixed seed): mean |E(Rx) - E(x)| (eV per molecule), mean over atoms of |F(Rx) - R F(x)|
    (eV/Å), and the prediction time (ms per structure, mean over the 1 + `rotations` passes)."""

    def timed(items: list[Structure]) -> tuple[list[Structure], float]:
        started = time.perf_counter()
        predicted = predict_structures(model, items, device=device, batch_size=batch_size, invariance=invariance)
        return predicted, time.perf_counter() - started

    reference, seconds = timed(structures)
    generator = torch.Generator().manual_seed(1234)
    energy_errors, force_errors = [], []
    for _ in range(rotations):
        matrices = random_rotations(len(structures), generator=generator, dtype=torch.float64).numpy()
        rotated = [Structure(s.numbers, s.positions @ r.T, molecule=s.molecule, name=s.name)
                   for s, r in zip(structures, matrices, strict=True)]
        predicted, spent = timed(rotated)
        seconds += spent
        for p, q, r in zip(reference, predicted, matrices, strict=True):
            energy_errors.append(abs(q.energy - p.energy))
            force_errors.append(np.linalg.norm(q.forces - p.forces @ r.T, axis=1))
    return {
        "invariance_energy_error_eV": float(np.mean(energy_errors)),
        "invariance_force_error_eV_A": float(np.concatenate(force_errors).mean()),
        "predict_ms_per_structure": 1000 * seconds / ((1 + rotations) * len(structures)),
    }


def parity_plot(reference: list[Structure], predicted: list[Structure], path: Path) -> Path:
    """Predicted vs reference energy per atom and force components (or the energy histogram without labels)."""
    plt = pyplot()
    labelled = [(r, p) for r, p in zip(reference, predicted, strict=True) if r.energy is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    if labelled:
        ref_e = np.array([r.energy / len(r) for r, _ in labelled])
        pred_e = np.array([p.energy / len(p) for _, p in labelled])
        axes[0].scatter(ref_e, pred_e, s=6)
        lo, hi = min(ref_e.min(), pred_e.min()), max(ref_e.max(), pred_e.max())
        axes[0].plot([lo, hi], [lo, hi], "k--", lw=0.8)
        axes[0].set_xlabel("reference energy (eV/atom)")
        axes[0].set_ylabel("predicted energy (eV/atom)")
        axes[0].set_title(f"energy MAE {1000 * np.abs(ref_e - pred_e).mean():.1f} meV/atom")
    else:
        axes[0].hist([p.energy for p in predicted], bins=30)
        axes[0].set_xlabel("predicted energy (eV)")
    with_forces = [(r, p) for r, p in zip(reference, predicted, strict=True) if r.forces is not None]
    if with_forces:
        ref_f = np.concatenate([r.forces.ravel() for r, _ in with_forces])
        pred_f = np.concatenate([p.forces.ravel() for _, p in with_forces])
        axes[1].scatter(ref_f, pred_f, s=2, alpha=0.4)
        lo, hi = min(ref_f.min(), pred_f.min()), max(ref_f.max(), pred_f.max())
        axes[1].plot([lo, hi], [lo, hi], "k--", lw=0.8)
        axes[1].set_xlabel("reference force component (eV/Å)")
        axes[1].set_ylabel("predicted (eV/Å)")
        axes[1].set_title(f"force MAE {np.abs(ref_f - pred_f).mean():.3f} eV/Å")
    else:
        axes[1].axis("off")
    fig.tight_layout()
    return save_png(fig, path)


class MoleculesDomain(Domain):
    name = "molecules"
    recipe_type = MoleculeRecipe
    cli_app = "panformer.molecules.cli:app"

    def task(self, recipe: Recipe) -> Task:
        # SchNet is invariant by construction: no frames (its model would skip them anyway).
        invariance = recipe.model.invariance if isinstance(recipe.model, CoordFormerConfig) else "none"
        return EnergyForceTask(loss=recipe.model.loss, invariance=invariance)

    def default_recipe(self, data: str | None) -> RecipeChoice:
        # Every recipe reads every structure file; they differ in the model. The main one is `coordformer`.
        if data is None or data == "nci":
            where = "no --data" if data is None else "nci"
            return RecipeChoice("coordformer", f"{where}: MMFF94-labelled NCI molecules, the coordinate transformer")
        path = Path(data)
        suffix = path.suffix.lower()
        if path.is_dir() and (path / "store.json").is_file():
            return RecipeChoice("coordformer", "a structure store, the coordinate transformer")
        if not path.is_file():
            raise self.unrecognised_data(data, f"no such file; give a structure file (.npz, .extxyz, .xyz, .sdf), "
                                               f"a {STORE_SUFFIX} store folder or nci")
        if suffix in SMILES_SUFFIXES:
            raise self.unrecognised_data(data, f"a SMILES list has no coordinates or energies; run "
                                               f"`panformer-molecules label {data} --output {path.stem}.npz` first")
        if suffix in (*SDF_SUFFIXES, NPZ_SUFFIX, ".xyz", ".extxyz", ".traj"):
            return RecipeChoice("coordformer", f"a structure file ({suffix}), the coordinate transformer")
        raise self.unrecognised_data(data, "not a structure file (.npz, .extxyz, .xyz, .traj, .sdf, .mol) or a "
                                           "SMILES list (.smi)")
