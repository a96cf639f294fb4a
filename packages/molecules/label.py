"""`label`: SMILES (or structures) -> conformers labelled with MMFF94 energies and forces.

RDKit's ETKDG embeds several conformers per molecule; each is labelled with the MMFF94 energy and
forces (forces = -gradient), optionally after some MMFF relaxation steps and a random displacement
("rattle"). ETKDG geometries are close to, but not at, MMFF minima, so their forces carry the local
bond and angle terms. MMFF works in kcal/mol and kcal/mol/Å; we store eV and eV/Å. Molecules are
labelled in parallel processes, with a progress bar.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panformer.engine.errors import UserError
from panformer.molecules.structures import (
    NPZ_SUFFIX,
    SDF_SUFFIXES,
    Structure,
    read_smiles,
    read_structures,
    write_structures,
)
from panformer.molecules.units import KCAL_PER_MOL_IN_EV


@dataclass(frozen=True)
class LabelOptions:
    conformers: int = 4  # per molecule
    mmff_steps: int = 0  # MMFF relaxation steps after embedding (0: label the ETKDG geometry as it is)
    max_atoms: int = 40  # with hydrogens; larger molecules are skipped
    rattle: float = 0.0  # std (Å) of a Gaussian displacement of every atom after relaxing
    seed: int = 0


def nci_smiles_path() -> Path:
    """RDKit's bundled NCI SMILES list (the offline source for the demo and tests)."""
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if not path.is_file():
        raise UserError(f"RDKit's NCI SMILES ({path}) are missing from this RDKit install; give a SMILES file")
    return path


def label_molecule(job: tuple[str, str, LabelOptions]) -> tuple[list[Structure], str | None]:
    """Conformers of one molecule with MMFF94 labels, or ([], why it was skipped)."""
    molecule_id, smiles, options = job
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return [], f"{molecule_id}: malformed SMILES {smiles!r}"
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > options.max_atoms:
        return [], f"{molecule_id}: {mol.GetNumAtoms()} atoms > --max-atoms {options.max_atoms}"
    params = AllChem.ETKDGv3()
    # RDKit gives every conformer the same coordinates when randomSeed is 0: offset the seed.
    params.randomSeed = 0xF00D + options.seed
    conformer_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=options.conformers, params=params))
    if not conformer_ids:
        return [], f"{molecule_id}: ETKDG found no conformer"
    properties = AllChem.MMFFGetMoleculeProperties(mol)
    if properties is None:
        return [], f"{molecule_id}: no MMFF94 parameters"
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    out = []
    for k, conformer_id in enumerate(conformer_ids):
        field = AllChem.MMFFGetMoleculeForceField(mol, properties, confId=conformer_id)
        if options.mmff_steps > 0:
            field.Minimize(maxIts=options.mmff_steps)
        positions = np.asarray(field.Positions(), dtype=np.float64).reshape(-1, 3)
        if options.rattle > 0:
            # Off-minimum geometries: the forces then carry the local (bond, angle) restoring terms.
            rng = np.random.default_rng([options.seed, k, zlib.crc32(smiles.encode())])
            positions = positions + rng.normal(scale=options.rattle, size=positions.shape)
        flat = positions.ravel().tolist()
        energy = field.CalcEnergy(flat) * KCAL_PER_MOL_IN_EV
        forces = -np.asarray(field.CalcGrad(flat), dtype=np.float64).reshape(-1, 3) * KCAL_PER_MOL_IN_EV
        out.append(Structure(numbers, positions, energy, forces, molecule=molecule_id,
                             name=f"{molecule_id}-c{k}", info={"smiles": smiles}))
    return out, None


def structures_to_smiles(path: Path, *, skip_bad: bool) -> list[tuple[str, str]]:
    """(id, SMILES) of each record of a structure file (re-labelled from fresh conformers)."""
    from rdkit import Chem

    if path.suffix.lower() in SDF_SUFFIXES:
        supplier = Chem.SDMolSupplier(str(path))
        entries = []
        for index, mol in enumerate(supplier):
            if mol is None:
                if not skip_bad:
                    raise UserError(f"{path}: record #{index + 1} is not a valid MOL block; fix it or pass --skip-bad")
                continue
            title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
            entries.append((title or f"record{index + 1}", Chem.MolToSmiles(mol)))
        return entries
    raise UserError(f"{path}: `label` reads SMILES lists (.smi) or SDF files; convert other formats to SDF")


def label_file(
    source: Path,
    output: Path,
    *,
    options: LabelOptions,
    limit: int | None = None,
    workers: int | None = None,
    skip_bad: bool = True,
    show_progress: bool = True,
) -> tuple[list[Structure], list[str]]:
    """Label every molecule of `source` (SMILES list or SDF) and write extended XYZ or .npz to `output`.

    Returns the structures and one message per skipped molecule. Raises UserError if none is usable.
    """
    source = Path(source)
    if output.suffix.lower() not in (".extxyz", ".xyz", NPZ_SUFFIX):
        raise UserError(f"--output {output}: label writes extended XYZ or Panformer arrays; give an .extxyz or "
                        ".npz path")
    if source.suffix.lower() in SDF_SUFFIXES:
        read_structures(source, skip_bad=True)  # a corrupt file fails here with a one-line message
        entries = structures_to_smiles(source, skip_bad=skip_bad)
    else:
        entries = read_smiles(source)
    if limit is not None:
        entries = entries[:limit]
    # Parse SMILES up front (fast): nothing parseable fails before any progress output.
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    skipped = [f"{mid}: malformed SMILES {smi!r}" for mid, smi in entries if Chem.MolFromSmiles(smi) is None]
    jobs = [(mid, smi, options) for mid, smi in entries if Chem.MolFromSmiles(smi) is not None]
    if not jobs:
        raise UserError(f"{source}: no molecule could be labelled (e.g. {skipped[0]}); check the SMILES")
    structures, failed = run_jobs(jobs, workers=workers, show_progress=show_progress)
    skipped += failed
    if not structures:
        first = f" (e.g. {skipped[0]})" if skipped else ""
        raise UserError(f"{source}: no molecule could be labelled{first}; check the SMILES")
    write_structures(output, structures)
    return structures, skipped


def run_jobs(
    jobs: list[tuple[str, str, LabelOptions]], *, workers: int | None, show_progress: bool
) -> tuple[list[Structure], list[str]]:
    from panformer.engine.runlog import progress_bar

    workers = workers or min(4, os.cpu_count() or 1)
    results: list[tuple[list[Structure], str | None]] = []
    with progress_bar(enabled=show_progress) as bar:
        task = bar.add_task("label (ETKDG + MMFF94)", total=len(jobs), status="")
        if workers == 1:
            for job in jobs:
                results.append(label_molecule(job))
                bar.update(task, advance=1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # map keeps the input order, so the output does not depend on scheduling.
                for result in pool.map(label_molecule, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                    results.append(result)
                    bar.update(task, advance=1)
    structures = [s for found, _ in results for s in found]
    skipped = [why for _, why in results if why is not None]
    return structures, skipped
