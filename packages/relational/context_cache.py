"""Sampled contexts on disk, memory-mapped (issue #22): training memory stays flat whatever the task's size.

`train` samples one context per task row (about 2.5 KB at 64 cells). Held in RAM they would grow with the
task, so each split's contexts are written chunk by chunk, as `iter_contexts` yields them, into one `.npy`
file per `Contexts` field (N rows each) plus `contexts.json` describing them. The files are written in a
temporary folder that is renamed into place only when every row is in (`atomic_path`): an interrupted
write is never read. Readers map the files read-only, so a context costs memory only while it is read.

The folder is keyed by everything the contexts depend on: the database file (path, size, modification
time), its keys and columns, the queries (entity ids and times), the statistics cut-off, the label name,
the sampling options and the sampler's own code. A second `train` on the same database opens it instead
of sampling; a changed file gets a new folder. Processes sampling the same folder at once (the ranks of
one `torchrun`) take turns: the first writes it, the others wait and read it. A source that is not a file (PostgreSQL, RelBench frames)
cannot be fingerprinted cheaply: its contexts go to a folder private to the process, removed at exit.

Legend: N contexts, L cells per context, W hashed words per cell, P parents per row.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from panformer.engine.files import atomic_path
from panformer.relational import sampling
from panformer.relational.database import Database
from panformer.relational.sampling import Contexts

CACHE_FORMAT = "relational-contexts-v1"
DESCRIPTION = "contexts.json"
FIELDS = tuple(Contexts.__dataclass_fields__)
_private_root: Path | None = None


def context_folder(
    db: Database,
    *,
    cache_dir: Path,
    split: str,
    entity_table: str,
    entity_ids: np.ndarray,
    timestamps: np.ndarray,
    stats_before: float | None,
    label_name: str,
    max_cells: int,
    children_per_table: int,
) -> Path:
    """Where the contexts of these queries (N entity ids, N float-second timestamps) are cached: under
    `cache_dir/contexts/`, or a process-private folder for a source that is not a file."""
    stamp = db.file_stamp()
    digest = hashlib.sha256()
    for part in (CACHE_FORMAT, Path(sampling.__file__).read_text(), stamp or "", db.name,
                 json.dumps(db.columns), json.dumps({n: vars(t) for n, t in db.schema.items()}, sort_keys=True),
                 entity_table, repr(stats_before), label_name, str(max_cells), str(children_per_table)):
        digest.update(part.encode() + b"\x00")
    digest.update(pd.util.hash_pandas_object(pd.Series(entity_ids), index=False).to_numpy().tobytes())
    digest.update(np.ascontiguousarray(timestamps, dtype=np.float64).tobytes())
    name = f"{db.name}-{split}-{digest.hexdigest()[:16]}"
    return (Path(cache_dir) / "contexts" if stamp else _private_folder()) / name


def _private_folder() -> Path:
    global _private_root
    if _private_root is None:
        _private_root = Path(tempfile.mkdtemp(prefix="panformer-contexts-"))
        atexit.register(shutil.rmtree, _private_root, ignore_errors=True)
    return _private_root


@contextlib.contextmanager
def writing_lock(folder: Path) -> Iterator[None]:
    """Held while this process checks and writes `folder` (a lock file beside it)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f"{folder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_contexts(folder: Path) -> Contexts | None:
    """The contexts cached in `folder`, mapped read-only; None unless it holds a complete cache."""
    try:
        about = json.loads((Path(folder) / DESCRIPTION).read_text())
        if about.get("format") != CACHE_FORMAT:
            return None
        count = int(about["count"])
        # An empty array cannot be mapped; it is only a header.
        arrays = {name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r" if count else None) for name in FIELDS}
    except (OSError, ValueError, KeyError):  # missing, truncated or foreign files
        return None
    if any(len(a) != count for a in arrays.values()):
        return None
    return Contexts(**arrays)


def write_contexts(folder: Path, parts: Iterable[tuple[int, Contexts]], *, count: int, max_cells: int,
                   parents: int, about: dict[str, object]) -> Contexts:
    """Write `parts` ((first row, contexts), in order, covering rows 0..count) into `folder` and map it.

    Each part is appended to the files as it comes, so one part is in memory at a time; the folder
    appears, with `contexts.json`, only once all `count` rows are written (and synced)."""
    template = Contexts.empty(0, max_cells, parents)
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir()
        with contextlib.ExitStack() as stack:
            files = {}
            for name in FIELDS:
                like = getattr(template, name)
                files[name] = stack.enter_context(open(tmp / f"{name}.npy", "wb"))
                np.lib.format.write_array_header_1_0(files[name], {
                    "descr": np.lib.format.dtype_to_descr(like.dtype), "fortran_order": False,
                    "shape": (count, *like.shape[1:])})
            written = 0
            for first, part in parts:
                if first != written:
                    raise RuntimeError(f"contexts for rows from {first} arrived after {written} rows")
                for name, file in files.items():
                    file.write(np.ascontiguousarray(getattr(part, name), dtype=getattr(template, name).dtype).data)
                written += len(part)
            if written != count:
                raise RuntimeError(f"{written} contexts were sampled for {count} queries")
            for file in files.values():
                file.flush()
                os.fsync(file.fileno())
        description = {"format": CACHE_FORMAT, "count": count, "max_cells": max_cells, "parents": parents, **about}
        (tmp / DESCRIPTION).write_text(json.dumps(description, indent=1) + "\n")
    contexts = open_contexts(folder)
    if contexts is None:
        raise RuntimeError(f"the context cache {folder} was written but cannot be read back")
    return contexts
