"""`label`: SMILES (or structures) -> conformers labelled with MMFF94 energies and forces.

RDKit's ETKDG embeds several conformers per molecule; each is labelled with the MMFF94 energy and
forces (forces = -gradient), optionally after some MMFF relaxation steps and a random displacement
("rattle"). ETKDG geometries are close to, but not at, MMFF minima, so their forces carry the local
bond and angle terms. MMFF works in kcal/mol and kcal/mol/Å; we store eV and eV/Å. Molecules are
labelled in parallel processes, with a progress bar.

Labelling appends as it goes: every `chunk_molecules` molecules go to a chunk file (atomically) in a
hidden `.NAME.partial` folder beside the output, so memory holds one chunk and an interrupted run, started
again with the same input and options, skips the chunks already done. The output is written from the
chunks at the end (a `.structures` store a chunk at a time) and the folder removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path, write_text_atomic
from panformer.molecules.structures import (
    NPZ_SUFFIX,
    SDF_SUFFIXES,
    STORE_SUFFIX,
    Structure,
    StructureArrays,
    read_smiles,
    read_structures,
    structure_arrays,
    write_store,
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


@dataclass(frozen=True)
class LabelSummary:
    structures: int  # conformers written
    molecules: int  # molecules with at least one conformer
    skipped: list[str]  # one message per molecule skipped


Job = tuple[str, str, LabelOptions]  # (molecule id, SMILES, options)
LABEL_OUTPUTS = (".extxyz", ".xyz", NPZ_SUFFIX, STORE_SUFFIX)


def label_file(
    source: Path,
    output: Path,
    *,
    options: LabelOptions,
    limit: int | None = None,
    workers: int | None = None,
    skip_bad: bool = True,
    show_progress: bool = True,
    chunk_molecules: int = 256,
) -> LabelSummary:
    """Label every molecule of `source` (SMILES list or SDF) into `output`: extended XYZ, .npz, or a
    `.structures` store (memory-mapped; any size). Resumes an interrupted run (see the module docstring).

    Raises UserError if no molecule is usable.
    """
    source, output = Path(source), Path(output)
    if output.suffix.lower() not in LABEL_OUTPUTS:
        raise UserError(f"--output {output}: label writes extended XYZ, Panformer arrays or a store; give an "
                        f".extxyz, .npz or {STORE_SUFFIX} path")
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
    parsed = [Chem.MolFromSmiles(smi) is not None for _, smi in entries]
    skipped = [f"{mid}: malformed SMILES {smi!r}" for (mid, smi), ok in zip(entries, parsed, strict=True) if not ok]
    jobs = [(mid, smi, options) for (mid, smi), ok in zip(entries, parsed, strict=True) if ok]
    if not jobs:
        raise UserError(f"{source}: no molecule could be labelled (e.g. {skipped[0]}); check the SMILES")
    partial = output.with_name(f".{output.name}.partial")
    chunks = _open_partial(partial, jobs, chunk_molecules=chunk_molecules)
    label_chunks(jobs, chunks, workers=workers, show_progress=show_progress)
    structures, molecules = 0, set()
    for arrays, why in _read_chunks(chunks):
        structures += len(arrays["atoms_per_structure"])
        molecules.update(arrays["molecule"].tolist())
        skipped += why
    if structures == 0:
        shutil.rmtree(partial)
        first = f" (e.g. {skipped[0]})" if skipped else ""
        raise UserError(f"{source}: no molecule could be labelled{first}; check the SMILES")
    if output.suffix.lower() == STORE_SUFFIX:
        write_store(output, lambda: (arrays for arrays, _ in _read_chunks(chunks)))
    else:  # one-file formats: held whole, as their writers need
        write_structures(output, [s for arrays, _ in _read_chunks(chunks) for s in StructureArrays(arrays)])
    shutil.rmtree(partial)
    return LabelSummary(structures, len(molecules), skipped)


def _open_partial(partial: Path, jobs: list[Job], *, chunk_molecules: int) -> list[tuple[Path, list[Job]]]:
    """(chunk file, its jobs) for every chunk of `jobs`; a partial folder of other jobs is started afresh."""
    digest = hashlib.sha256(json.dumps([chunk_molecules, [[mid, smi, asdict(opt)] for mid, smi, opt in jobs]])
                            .encode()).hexdigest()
    job_file = partial / "job.json"
    if partial.is_dir():
        try:
            same = json.loads(job_file.read_text()).get("jobs") == digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            print(f"note: {partial} holds an interrupted run of other molecules or options; starting afresh",
                  file=sys.stderr)
            shutil.rmtree(partial)
    if not partial.is_dir():
        partial.mkdir(parents=True)
        write_text_atomic(job_file, json.dumps({"jobs": digest}) + "\n")
    return [(partial / f"chunk-{k:06d}.npz", jobs[start:start + chunk_molecules])
            for k, start in enumerate(range(0, len(jobs), chunk_molecules))]


def _chunk_done(path: Path) -> bool:
    """Whether a chunk file is complete (written atomically, so it exists whole or not at all)."""
    try:
        with np.load(path, allow_pickle=False) as chunk:
            return "skipped" in chunk.files
    except (OSError, ValueError, EOFError):
        return False


def _read_chunks(chunks: list[tuple[Path, list[Job]]]) -> Iterator[tuple[dict[str, np.ndarray], list[str]]]:
    """(structure arrays, skip messages) of every chunk, in order, one in memory at a time."""
    for path, _ in chunks:
        with np.load(path, allow_pickle=False) as chunk:
            arrays = {key: chunk[key] for key in chunk.files if key != "skipped"}
            yield arrays, chunk["skipped"].tolist()


def label_chunks(
    jobs: list[Job], chunks: list[tuple[Path, list[Job]]], *, workers: int | None, show_progress: bool
) -> None:
    """Label the jobs of every chunk not yet written and write its file, in parallel processes."""
    from panformer.engine.runlog import progress_bar

    todo = [(path, part) for path, part in chunks if not _chunk_done(path)]
    remaining = [job for _, part in todo for job in part]
    if len(remaining) < len(jobs):
        print(f"resuming: {len(jobs) - len(remaining)} of {len(jobs)} molecules already labelled", file=sys.stderr)
    workers = workers or min(4, os.cpu_count() or 1)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and remaining else None
    try:
        # Both keep the input order, so the output does not depend on scheduling.
        results = (pool.map(label_molecule, remaining, chunksize=max(1, min(16, len(remaining) // (8 * workers))))
                   if pool is not None else map(label_molecule, remaining))
        with progress_bar(enabled=show_progress) as bar:
            task = bar.add_task("label (ETKDG + MMFF94)", total=len(jobs), completed=len(jobs) - len(remaining),
                                status="")
            for path, part in todo:
                found: list[Structure] = []
                skipped: list[str] = []
                for _ in part:
                    structures, why = next(results)
                    found += structures
                    skipped += [why] if why is not None else []
                    bar.update(task, advance=1)
                # float64: extended XYZ keeps full precision (the .npz and store writers round to float32).
                with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                    np.savez(handle, **structure_arrays(found, real=np.float64), skipped=np.array(skipped, dtype=str))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
