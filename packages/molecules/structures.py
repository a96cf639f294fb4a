"""Structures (atoms, positions, energy, forces) and the readers and writers for the usual file formats.

Readers: SDF/MOL (RDKit; energies and forces from SD properties), XYZ / extended XYZ and anything
`ase.io.read` understands (energies and forces from the calculator results or `atoms.info`), Panformer's
own structure arrays (.npz: numpy only, so a machine without RDKit or ASE can train on a labelled set),
Panformer structure stores (a folder of the same arrays as .npy files, memory-mapped: sets of any size),
and SMILES lists (for `label`). Units are converted on read: inside Panformer everything is eV, Å and eV/Å.

A bad record (no 3-D coordinates, unknown element, a force array of the wrong shape) raises a
`UserError` naming the file and record, or with `skip_bad=True` is skipped and reported.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.molecules.units import energy_factor

SDF_SUFFIXES = (".sdf", ".mol", ".sd")
SMILES_SUFFIXES = (".smi", ".smiles")
NPZ_SUFFIX = ".npz"
NPZ_FORMAT = "panformer-molecules-structures-v1"
STORE_SUFFIX = ".structures"
STORE_FORMAT = "panformer-molecules-store-v1"
STORE_UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å"}
MAX_Z = 118

# SD properties that hold an energy, with their unit (checked in this order).
SDF_ENERGY_PROPERTIES: dict[str, str] = {
    "energy_eV": "eV",
    "energy_kcal_mol": "kcal/mol",
    "MMFF94_energy_kcal_mol": "kcal/mol",
    # Schrödinger MacroModel (RDKit's bundled egfr.sdf / cdk2.sdf): kJ/mol.
    "r_mmffld_Potential_Energy-OPLS_2005": "kJ/mol",
}
# SD properties that hold forces as 3N whitespace-separated numbers, with their unit.
SDF_FORCE_PROPERTIES: dict[str, str] = {"forces_eV_A": "eV", "forces_kcal_mol_A": "kcal/mol"}


@dataclass
class Structure:
    """One conformer. numbers (N,) atomic numbers; positions (N, 3) Å; energy eV; forces (N, 3) eV/Å.

    `molecule` groups conformers of one molecule (splits never separate them); `name` names the
    record in messages and outputs.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    molecule: str = ""
    name: str = ""
    info: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)


@dataclass
class ReadResult:
    structures: list[Structure]
    skipped: list[str]  # one message per skipped record


class BadRecord(Exception):
    """A record that cannot be used; the message says why (without the file name)."""


def check_structure(s: Structure) -> Structure:
    """Raise BadRecord unless `s` is usable: known elements, finite coordinates, matching forces."""
    n = len(s.numbers)
    if n == 0:
        raise BadRecord("has no atoms")
    if s.positions.shape != (n, 3) or not np.isfinite(s.positions).all():
        raise BadRecord("has no finite 3-D coordinates")
    if (s.numbers < 1).any() or (s.numbers > MAX_Z).any():
        raise BadRecord("has an unknown element (atomic number outside 1..118)")
    if s.energy is not None and not math.isfinite(s.energy):
        raise BadRecord("has a non-finite energy")
    if s.forces is not None:
        if s.forces.shape != (n, 3):
            raise BadRecord(f"has a force array of shape {tuple(s.forces.shape)} for {n} atoms; expected ({n}, 3)")
        if not np.isfinite(s.forces).all():
            raise BadRecord("has non-finite forces")
    return s


def _collect(
    path: Path, records: Iterable[tuple[str, Structure | Exception]], *, skip_bad: bool
) -> ReadResult:
    good, skipped = [], []
    for name, item in records:
        try:
            if isinstance(item, Exception):
                raise item
            good.append(check_structure(item))
        except BadRecord as err:
            if not skip_bad:
                raise UserError(f"{path}: record {name} {err}; fix it or pass --skip-bad") from None
            skipped.append(f"{path}: record {name} {err}")
    if not good:
        why = f" ({skipped[0]})" if skipped else ""
        raise UserError(f"{path}: no usable structures{why}; check the file")
    return ReadResult(good, skipped)


# --- SDF / MOL ----------------------------------------------------------------------------------------


def _sdf_records(path: Path, energy_key: str | None, energy_unit: str | None) -> Iterable[tuple[str, Structure | Exception]]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # RDKit prints parse problems itself; we report them in one line
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    for index in range(len(supplier)):
        mol = supplier[index]
        name = f"#{index + 1}"
        if mol is None:
            yield name, BadRecord("is not a valid MOL block")
            continue
        title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        name = f"#{index + 1}" + (f" ({title})" if title else "")
        if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
            yield name, BadRecord("has no 3-D coordinates (a 2-D or coordinate-free record)")
            continue
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        positions = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
        props = mol.GetPropsAsDict(includePrivate=False)
        try:
            energy = _sdf_energy(props, energy_key, energy_unit)
            forces = _sdf_forces(props, len(numbers))
        except BadRecord as err:
            yield name, err
            continue
        molecule = str(props.get("molecule_id", title or f"record{index + 1}"))
        yield name, Structure(numbers, positions, energy, forces, molecule=molecule,
                              name=title or f"record{index + 1}")


def _sdf_energy(props: dict, key: str | None, unit: str | None) -> float | None:
    candidates = {key: unit or "eV"} if key else SDF_ENERGY_PROPERTIES
    for prop, prop_unit in candidates.items():
        if prop in props:
            try:
                return float(props[prop]) * energy_factor(prop_unit)
            except ValueError:
                raise BadRecord(f"has a non-numeric energy property <{prop}>") from None
    return None


def _sdf_forces(props: dict, n: int) -> np.ndarray | None:
    for prop, unit in SDF_FORCE_PROPERTIES.items():
        if prop in props:
            try:
                values = np.array(str(props[prop]).split(), dtype=np.float64)
            except ValueError:
                raise BadRecord(f"has a non-numeric force property <{prop}>") from None
            if values.size != 3 * n:
                raise BadRecord(f"has {values.size} force values in <{prop}> for {n} atoms; expected {3 * n}")
            return values.reshape(n, 3) * energy_factor(unit)
    return None


# --- ASE (XYZ, extended XYZ, ...) ------------------------------------------------------------------


def _ase_records(path: Path, energy_unit: str | None) -> Iterable[tuple[str, Structure | Exception]]:
    import ase.io

    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as err:  # ASE raises many types for malformed files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot read it as a structure file ({first}); check the format") from None
    factor = energy_factor(energy_unit or "eV")
    for index, atoms in enumerate(frames):
        name = f"#{index + 1}"
        info = {k: str(v) for k, v in atoms.info.items() if isinstance(v, (str, int, float))}
        energy = forces = None
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        if "energy" in results:
            energy = float(results["energy"]) * factor
        elif "energy" in atoms.info:
            energy = float(atoms.info["energy"]) * factor
        raw_forces = results.get("forces", atoms.arrays.get("forces"))
        if raw_forces is not None:
            forces = np.asarray(raw_forces, dtype=np.float64) * factor
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        # Without an id, group by formula: conformers of one molecule can never straddle a split.
        molecule = str(atoms.info.get("molecule_id", atoms.get_chemical_formula()))
        yield name, Structure(numbers, np.asarray(atoms.positions, dtype=np.float64), energy, forces,
                              molecule=molecule, name=str(atoms.info.get("name", f"{path.stem}-{index + 1}")),
                              info=info)


# --- Panformer structure arrays (.npz) -----------------------------------------------------------------
#
# One file, numpy only: atoms of all structures concatenated. Keys: format (the NPZ_FORMAT string),
# atoms_per_structure (S,), numbers (A,), positions (A, 3) Å, forces (A, 3) eV/Å (NaN rows: no forces),
# energy (S,) eV (NaN: none), molecule (S,) and name (S,) strings, and optionally smiles (S,).
# Positions and forces are float32: 1e-7 relative rounding is far below any labelling error.


def _npz_records(path: Path, energy_unit: str | None) -> Iterable[tuple[str, Structure | Exception]]:
    required = ("format", "atoms_per_structure", "numbers", "positions", "forces", "energy", "molecule", "name")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:  # numpy raises several types for a damaged archive
        raise UserError(f"{path}: cannot read it as a .npz archive ({type(err).__name__}); re-create it with "
                        "`label --output FILE.npz`") from None
    missing = [key for key in required if key not in arrays]
    if missing or str(arrays["format"]) != NPZ_FORMAT:
        what = f"lacks {', '.join(missing)}" if missing else f"has format {str(arrays['format'])!r}"
        raise UserError(f"{path}: {what}, not a Panformer structure archive ({NPZ_FORMAT}); re-create it with "
                        "`label --output FILE.npz`")
    counts = arrays["atoms_per_structure"].astype(np.int64)
    total = int(counts.sum())
    per_structure = [arrays[k] for k in ("energy", "molecule", "name")]
    per_atom = [arrays[k] for k in ("numbers", "positions", "forces")]
    if any(len(a) != len(counts) for a in per_structure) or any(len(a) != total for a in per_atom):
        raise UserError(f"{path}: array lengths disagree with atoms_per_structure; re-create the file")
    factor = energy_factor(energy_unit or "eV")
    smiles = arrays.get("smiles")
    ends = np.cumsum(counts)
    for index, (count, end) in enumerate(zip(counts, ends, strict=True)):
        atoms = slice(int(end - count), int(end))
        forces = arrays["forces"][atoms].astype(np.float64)
        energy = float(arrays["energy"][index])
        yield f"#{index + 1} ({arrays['name'][index]})", Structure(
            arrays["numbers"][atoms].astype(np.int64), arrays["positions"][atoms].astype(np.float64),
            None if math.isnan(energy) else energy * factor,
            None if np.isnan(forces).all() else forces * factor,
            molecule=str(arrays["molecule"][index]), name=str(arrays["name"][index]),
            info={"smiles": str(smiles[index])} if smiles is not None else {},
        )


# --- Panformer structure stores (a folder of memory-mapped .npy files) ---------------------------------
#
# The .npz archive's arrays, one uncompressed .npy file each (atoms_per_structure, numbers, positions,
# forces, energy, molecule, name and, when every structure has one, smiles), plus max_force.npy (S,): the
# largest atomic force of each structure (eV/Å; NaN: no forces), and store.json: format, structure and atom
# counts, units and the data fingerprint. Readers map the files (mmap_mode='r'): opening a store reads its
# per-structure columns only, and a structure's atoms are read when it is asked for.

PER_STRUCTURE = ("atoms_per_structure", "energy", "max_force", "molecule", "name")
PER_ATOM = ("numbers", "positions", "forces")


def _update_fingerprint(digest: hashlib._Hash, structures: Iterable[Structure]) -> None:
    for s in structures:
        digest.update(s.molecule.encode())
        digest.update(np.ascontiguousarray(s.positions, dtype=np.float64).tobytes())
        digest.update(repr(s.energy).encode())


def fingerprint(structures: Iterable[Structure]) -> str:
    """What identifies a data set for `train --resume`: molecules, positions and energies, in order."""
    digest = hashlib.sha256()
    _update_fingerprint(digest, structures)
    return digest.hexdigest()[:16]


def _largest_forces(counts: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """(S,) the largest atomic force norm of each structure (NaN where it has no forces); every S has atoms."""
    if len(counts) == 0:
        return np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(counts[:-1], dtype=np.int64)])
    return np.maximum.reduceat(np.linalg.norm(np.asarray(forces, dtype=np.float64), axis=1), starts)


class StructureArrays:
    """S structures as flat columns (`PER_STRUCTURE` (S,), `PER_ATOM` (A,) or (A, 3), optional smiles (S,)):
    memory-mapped from a store (`open_store`) or in memory (`from_structures`). `arrays[i]` reads the i-th
    Structure (float64 copies); `atom_rows(indices)` says where the atoms of several are."""

    def __init__(self, columns: Mapping[str, np.ndarray], *, stored_fingerprint: str | None = None,
                 path: Path | None = None) -> None:
        self.columns = dict(columns)
        self.counts = np.asarray(self.columns["atoms_per_structure"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # (S + 1,)
        self.stored_fingerprint = stored_fingerprint  # written with the store; None: computed when asked
        self.path = path

    @classmethod
    def from_structures(cls, structures: Sequence[Structure]) -> StructureArrays:
        """In memory, positions and forces kept in float64 (structures read back are the ones given)."""
        columns = structure_arrays(structures, real=np.float64)
        columns["max_force"] = _largest_forces(columns["atoms_per_structure"], columns["forces"])
        return cls(columns)

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index: int) -> Structure:
        c = self.columns
        atoms = slice(int(self.offsets[index]), int(self.offsets[index + 1]))
        forces = np.array(c["forces"][atoms], dtype=np.float64)
        energy = float(c["energy"][index])
        return Structure(np.array(c["numbers"][atoms], dtype=np.int64),
                         np.array(c["positions"][atoms], dtype=np.float64), None if math.isnan(energy) else energy,
                         None if np.isnan(forces).all() else forces,
                         molecule=str(c["molecule"][index]), name=str(c["name"][index]),
                         info={"smiles": str(c["smiles"][index])} if "smiles" in c else {})

    def __iter__(self) -> Iterator[Structure]:
        return (self[i] for i in range(len(self)))

    def atom_rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the per-atom columns holding the atoms of structures `indices` (in order), and (len(indices),)
        the position in `indices` each row belongs to."""
        counts = self.counts[indices]
        owner = np.repeat(np.arange(len(indices)), counts)
        first_row = np.cumsum(counts) - counts  # of each structure, within the rows returned
        return self.offsets[indices][owner] + np.arange(len(owner)) - first_row[owner], owner

    def fingerprint(self) -> str:
        return self.stored_fingerprint or fingerprint(self)

    def __getstate__(self) -> dict:
        # A DataLoader worker given a store reopens its maps rather than receiving a copy of the data.
        return {"reopen": self.path} if self.path is not None else self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(open_store(state["reopen"]).__dict__ if "reopen" in state else state)


def _store_problem(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; re-create the store (`panformer-molecules label ... --output "
                     f"NAME{STORE_SUFFIX}`)")


def open_store(path: Path, *, energy_unit: str | None = None) -> StructureArrays:
    """A store's arrays, memory-mapped. A missing, damaged or truncated file is a UserError naming it."""
    path = Path(path)
    meta_path = path / "store.json"
    if not meta_path.is_file():
        raise UserError(f"{path} is a folder without store.json, not a Panformer structure store; give a structure "
                        f"file or a store written by `label --output NAME{STORE_SUFFIX}`")
    try:
        meta = json.loads(meta_path.read_text())
        structures, atoms = int(meta["structures"]), int(meta["atoms"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _store_problem(meta_path, f"damaged or truncated ({type(err).__name__})") from None
    if meta.get("format") != STORE_FORMAT or meta.get("units") != STORE_UNITS:
        raise _store_problem(meta_path, f"not a {STORE_FORMAT} store in {STORE_UNITS['energy']}, "
                                        f"{STORE_UNITS['length']} and {STORE_UNITS['forces']}")
    if energy_unit is not None and energy_factor(energy_unit) != 1.0:
        raise UserError(f"{path}: a store records its units (eV, Å, eV/Å) in store.json; drop the energy unit "
                        f"{energy_unit!r}")
    columns = {}
    for name in (*PER_STRUCTURE, *PER_ATOM, *(("smiles",) if meta.get("smiles") else ())):
        file = path / f"{name}.npy"
        if not file.is_file():
            raise _store_problem(file, "missing")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            raise _store_problem(file, "damaged or truncated (not a whole .npy array)") from None
        rows = atoms if name in PER_ATOM else structures
        if len(array) != rows or array.shape[1:] != ((3,) if name in ("positions", "forces") else ()):
            raise _store_problem(file, f"holds shape {array.shape}, but store.json says {rows} rows")
        columns[name] = array
    store = StructureArrays(columns, stored_fingerprint=meta.get("fingerprint"), path=path)
    if store.offsets[-1] != atoms:
        raise _store_problem(path / "atoms_per_structure.npy", f"counts {store.offsets[-1]} atoms, store.json {atoms}")
    return store


def write_store(path: Path, parts: Callable[[], Iterable[Mapping[str, np.ndarray]]]) -> Path:
    """A store at `path` from parts (dicts of `structure_arrays`), written atomically, one part in memory at a time.

    `parts()` is called twice: once to size the files, once to fill them.
    """
    structures = atoms = 0
    widths = {"molecule": 1, "name": 1, "smiles": 1}
    smiles = True
    for part in parts():
        if len(part["atoms_per_structure"]):
            structures += len(part["atoms_per_structure"])
            atoms += len(part["numbers"])
            smiles = smiles and "smiles" in part
            for key in widths:
                if key in part:
                    widths[key] = max(widths[key], np.asarray(part[key]).dtype.itemsize // 4)
    if structures == 0:
        raise UserError(f"{path}: no structures to write")
    shapes = {"atoms_per_structure": ((structures,), np.int32), "energy": ((structures,), np.float64),
              "max_force": ((structures,), np.float64), "numbers": ((atoms,), np.uint8),
              "positions": ((atoms, 3), np.float32), "forces": ((atoms, 3), np.float32),
              **{key: ((structures,), f"<U{width}") for key, width in widths.items() if key != "smiles" or smiles}}
    digest = hashlib.sha256()
    with atomic_path(Path(path)) as tmp:
        tmp.mkdir()
        files = {key: np.lib.format.open_memmap(tmp / f"{key}.npy", mode="w+", dtype=dtype, shape=shape)
                 for key, (shape, dtype) in shapes.items()}
        s = a = 0
        for part in parts():
            if not len(part["atoms_per_structure"]):
                continue
            columns = {key: np.asarray(part[key]).astype(files[key].dtype) for key in files if key != "max_force"}
            columns["max_force"] = _largest_forces(columns["atoms_per_structure"], columns["forces"])
            n, m = len(columns["atoms_per_structure"]), len(columns["numbers"])
            for key, array in columns.items():
                if key in PER_ATOM:
                    files[key][a:a + m] = array
                else:
                    files[key][s:s + n] = array
            # The fingerprint of the structures as they will be read back (float32 positions).
            _update_fingerprint(digest, StructureArrays(columns))
            s, a = s + n, a + m
        for array in files.values():
            array.flush()
        del files
        meta = {"format": STORE_FORMAT, "structures": structures, "atoms": atoms, "units": STORE_UNITS,
                "smiles": smiles, "fingerprint": digest.hexdigest()[:16]}
        (tmp / "store.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return Path(path)


def read_structures(
    path: Path, *, skip_bad: bool = False, energy_key: str | None = None, energy_unit: str | None = None
) -> ReadResult:
    """Every structure of an SDF/MOL file, a Panformer .npz archive or store, or an ASE-readable file (XYZ,
    extended XYZ, ...), in memory. Training opens stores with `open_store` instead (read when asked for)."""
    path = Path(path)
    if path.is_dir():
        return ReadResult(list(open_store(path, energy_unit=energy_unit)), [])  # checked when written
    if not path.is_file():
        raise UserError(f"{path} does not exist; give an .sdf, .mol, .xyz or .extxyz file")
    if path.suffix.lower() in SMILES_SUFFIXES:
        raise UserError(f"{path} is a SMILES list (no coordinates); turn it into structures with `label` first")
    if path.suffix.lower() in SDF_SUFFIXES:
        records = _sdf_records(path, energy_key, energy_unit)
    elif path.suffix.lower() == NPZ_SUFFIX:
        records = _npz_records(path, energy_unit)
    else:
        records = _ase_records(path, energy_unit)
    return _collect(path, records, skip_bad=skip_bad)


# --- SMILES lists ------------------------------------------------------------------------------------


def read_smiles(path: Path) -> list[tuple[str, str]]:
    """(id, SMILES) per line of a SMILES list: `SMILES [id]` separated by whitespace or a comma.

    A first line whose first field is `smiles` is a header. Blank lines and `#` comments are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a SMILES list (.smi) or an .sdf file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text SMILES list; give one SMILES per line") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if number == 1 and fields[0].lower() == "smiles":
            continue
        entries.append((fields[1] if len(fields) > 1 else f"line{number}", fields[0]))
    if not entries:
        raise UserError(f"{path} holds no SMILES; give one SMILES per line")
    return entries


# --- writers ------------------------------------------------------------------------------------------


def to_atoms(s: Structure, *, energy: float | None = None, forces: np.ndarray | None = None):
    """An ase.Atoms with the energy and forces attached (a single-point calculator)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=s.numbers, positions=s.positions)
    # "energy" in info would shadow the calculator's energy when the file is read back.
    extra = {k: v for k, v in s.info.items() if k != "energy"}
    atoms.info.update({"molecule_id": s.molecule, "name": s.name, **extra})
    energy = s.energy if energy is None else energy
    forces = s.forces if forces is None else forces
    results = {}
    if energy is not None:
        results["energy"] = float(energy)
    if forces is not None:
        results["forces"] = np.asarray(forces)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_extxyz(path: Path, structures: Sequence[Structure]) -> Path:
    """Extended XYZ with energies (eV) and forces (eV/Å), written atomically."""
    import ase.io

    buffer = io.StringIO()
    ase.io.write(buffer, [to_atoms(s) for s in structures], format="extxyz")
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)


def structure_arrays(structures: Sequence[Structure], *, real: type = np.float32) -> dict[str, np.ndarray]:
    """The .npz archive's arrays (see `_npz_records`, less `format`) of `structures`; positions and forces as `real`."""
    return {
        "atoms_per_structure": np.array([len(s) for s in structures], dtype=np.int32),
        "numbers": np.concatenate([s.numbers for s in structures] or [[]]).astype(np.uint8),
        "positions": np.concatenate([s.positions for s in structures] or [np.zeros((0, 3))]).astype(real),
        "forces": np.concatenate([s.forces if s.forces is not None else np.full((len(s), 3), np.nan)
                                  for s in structures] or [np.zeros((0, 3))]).astype(real),
        "energy": np.array([np.nan if s.energy is None else s.energy for s in structures], dtype=np.float64),
        "molecule": np.array([s.molecule for s in structures], dtype=str),
        "name": np.array([s.name for s in structures], dtype=str),
    } | ({"smiles": np.array([s.info["smiles"] for s in structures], dtype=str)}
         if structures and all("smiles" in s.info for s in structures) else {})


def write_npz(path: Path, structures: Sequence[Structure]) -> Path:
    """Panformer's structure arrays (see `_npz_records`), compressed and written atomically; numpy only."""
    arrays = {"format": np.array(NPZ_FORMAT), **structure_arrays(structures)}
    # A file object: given a name, np.savez would append .npz to the temporary one.
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def write_csv(path: Path, structures: Sequence[Structure]) -> Path:
    """One row per atom: structure, molecule, atom, element, x/y/z (Å), energy_eV of the structure, fx/fy/fz (eV/Å)."""
    from ase.data import chemical_symbols

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["structure", "name", "molecule", "atom", "element", "x", "y", "z", "energy_eV",
                     "fx_eV_A", "fy_eV_A", "fz_eV_A"])
    for index, s in enumerate(structures):
        forces = s.forces if s.forces is not None else np.full((len(s), 3), np.nan)
        for atom, (z, pos, force) in enumerate(zip(s.numbers, s.positions, forces, strict=True)):
            writer.writerow([index, s.name, s.molecule, atom, chemical_symbols[int(z)],
                             *(f"{v:.6f}" for v in pos), f"{s.energy:.6f}" if s.energy is not None else "",
                             *(f"{v:.6f}" for v in force)])
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)


def write_structures(path: Path, structures: Sequence[Structure]) -> Path:
    """Extended XYZ (.xyz/.extxyz), Panformer arrays (.npz) or CSV (.csv), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return write_extxyz(path, structures)
    if suffix == NPZ_SUFFIX:
        return write_npz(path, structures)
    if suffix == STORE_SUFFIX:
        return write_store(path, lambda: [structure_arrays(structures)])
    if suffix == ".csv":
        return write_csv(path, structures)
    raise UserError(f"--output {path}: give an .extxyz, .xyz, .npz, {STORE_SUFFIX} (a store folder) or .csv path")
