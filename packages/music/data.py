"""Datasets of pieces: folders of MIDI files and the music21 corpus, cached, split by piece, windowed.

Sources (`data.source` or `train --data`):
- `music21:bach` (or `music21:bach,haydn`): pieces of the composers in the corpus music21's wheel ships
  (Bach chorales, Palestrina, Haydn/Mozart/Beethoven quartets ...), offline;
- a folder: every `.mid`/`.midi` file below it.

Parsed pieces are cached once, pre-tokenised, in a memory-mapped `PieceStore` folder under `data.cache_dir`
(keyed by the source and the files' names, sizes and modification times); unreadable or empty files are
skipped and counted in one line. Training windows are cut from the mapped events when read, so memory
stays bounded by the window index, not the collection. Splits hold whole pieces, so no piece is both
trained and tested on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.engine.files import write_text_atomic
from panformer.engine.runlog import console, progress_bar
from panformer.music.midi import (
    MIDI_SUFFIXES,
    GridNotes,
    Piece,
    notes_of,
    read_midi_grid,
    read_music21,
)
from panformer.music.representation import (
    BEAT,
    EOS,
    INSTRUMENT,
    INSTRUMENT_EVENT,
    INSTRUMENTS,
    SON,
    SOS,
    TYPE,
    encode_array,
    encode_notes,
    instrument_code,
    notes_array,
)

MUSIC21_PREFIX = "music21:"


# --- reading and caching -------------------------------------------------------------------------


def source_files(source: str, *, max_pieces: int | None) -> list[Path]:
    """The files a source names, in a fixed order (a seeded sample of `max_pieces` when given)."""
    if source.startswith(MUSIC21_PREFIX):
        from music21 import corpus

        files: list[Path] = []
        for composer in filter(None, source[len(MUSIC21_PREFIX):].split(",")):
            found = [Path(p) for p in corpus.getComposer(composer)]
            if not found:
                raise UserError(f"--data {source}: the music21 corpus has no pieces by '{composer}' "
                                "(try bach, palestrina, haydn, mozart, beethoven)")
            files += found
    else:
        folder = Path(source)
        if not folder.exists():
            raise UserError(f"--data {source} does not exist; give a folder of .mid files or music21:<composer>")
        if folder.is_file():
            raise UserError(f"--data {source}: give a folder of .mid files (or music21:<composer>), not one file")
        files = [p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES]
        if not files:
            raise UserError(f"--data {source}: the folder holds no .mid/.midi files")
    files = sorted(set(files))
    if max_pieces is not None and len(files) > max_pieces:
        files = sorted(random.Random(0).sample(files, max_pieces))
    return files


def _read(path: Path, source: str) -> tuple[str, GridNotes]:
    """A file's piece name and its notes on the grid."""
    if source.startswith(MUSIC21_PREFIX):
        from music21 import corpus

        root = Path(corpus.__file__).parent
        name = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
        piece = read_music21(corpus.parse(str(path)), name)
        return name, GridNotes(notes_array(piece.notes), piece.qpm, piece.beats_per_bar, set())
    return path.stem, read_midi_grid(path)


class PieceStore(Sequence[Piece]):
    """Parsed pieces on disk, memory-mapped: every piece's grid notes and its whole MMT encoding.

    The folder holds `notes.i32` (N, 5) grid rows (beat, position, pitch, duration steps, instrument code),
    `codes.i32` (E, 6) the pieces' MMT events (`encode_array`, no beat limit: the pre-tokenised dataset
    that windows are cut from), `pieces.jsonl` one line per piece [name, notes, events, qpm, beats per bar],
    `skipped.jsonl` one line per file left out [path, reason], and `progress.json`. Indexing returns a
    `Piece` built on demand, so holding the store costs a few numbers per piece, not the music.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        progress = json.loads((self.folder / "progress.json").read_text())
        self.files = int(progress["files"])
        meta = [json.loads(line) for line in _lines(self.folder / "pieces.jsonl", progress["pieces_bytes"])]
        self.skipped = [tuple(json.loads(line)) for line in _lines(self.folder / "skipped.jsonl",
                                                                   progress["skipped_bytes"])]
        self.names = [m[0] for m in meta]
        self.note_counts = np.asarray([m[1] for m in meta], dtype=np.int64)
        self.event_counts = np.asarray([m[2] for m in meta], dtype=np.int64)
        self.qpm = [float(m[3]) for m in meta]
        self.beats_per_bar = [float(m[4]) for m in meta]
        self.note_offsets = np.concatenate([[0], np.cumsum(self.note_counts)])
        self.event_offsets = np.concatenate([[0], np.cumsum(self.event_counts)])
        self.notes = _memmap(self.folder / "notes.i32", int(self.note_offsets[-1]), 5)
        self.events = _memmap(self.folder / "codes.i32", int(self.event_offsets[-1]), 6)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Piece:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        rows = self.notes[self.note_offsets[index]:self.note_offsets[index + 1]]
        return Piece(self.names[index], notes_of(rows), qpm=self.qpm[index], beats_per_bar=self.beats_per_bar[index])

    def codes(self, index: int) -> np.ndarray:
        """The piece's MMT events (E_i, 6), a read-only view of the memory map."""
        return self.events[self.event_offsets[index]:self.event_offsets[index + 1]]

    def instruments(self, indices: Sequence[int]) -> list[str]:
        """Instrument classes the given pieces play (from their headers)."""
        found: set[int] = set()
        for i in indices:
            head = self.codes(i)[:len(INSTRUMENTS) + 2]
            found.update(head[head[:, TYPE] == INSTRUMENT_EVENT, INSTRUMENT].tolist())
        return sorted(INSTRUMENTS[c - 1] for c in found)

    def skipped_line(self) -> str | None:
        """One line counting the files left out (None when none was)."""
        if not self.skipped:
            return None
        _, reason = self.skipped[0]
        more = f" and {len(self.skipped) - 1:,} more" if len(self.skipped) > 1 else ""
        return (f"music: skipped {len(self.skipped):,} of {self.files:,} files (unreadable or without notes): "
                f"{reason}{more}; the list is in {self.folder / 'skipped.jsonl'}")


class PieceList(Sequence[Piece]):
    """Some pieces of a store, by index, each built on demand."""

    def __init__(self, store: PieceStore, indices: Sequence[int]) -> None:
        self.store, self.indices = store, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Piece:  # type: ignore[override]
        return self.store[self.indices[index]]


def _lines(path: Path, size: int) -> list[str]:
    """The complete lines among the first `size` bytes of `path` (later bytes: an interrupted write)."""
    with open(path, "rb") as f:
        return f.read(size).decode().splitlines()


def _memmap(path: Path, rows: int, columns: int) -> np.ndarray:
    if rows == 0:
        return np.zeros((0, columns), dtype="<i4")
    return np.memmap(path, dtype="<i4", mode="r", shape=(rows, columns))


CACHE_VERSION = "pieces-v2"  # part of the cache key: a new layout never reads an old one
CHECKPOINT_FILES = 500  # files parsed between two commits of the cache (an interrupted read resumes there)
MIN_PIECES = 3  # one each for train, val and test
_STORE_FILES = ("notes.i32", "codes.i32", "pieces.jsonl", "skipped.jsonl")


def load_pieces(source: str, *, cache_dir: Path, max_pieces: int | None = None,
                skip_bad_files: bool = True) -> PieceStore:
    """Every piece of `source`, parsed and encoded once into a `PieceStore` under `cache_dir`.

    The store is keyed by the source and its files' names, sizes and modification times, so a changed file
    makes a new one. Parsing appends to the store and commits every `CHECKPOINT_FILES` files: an interrupted
    first read resumes where it stopped. A file that is not MIDI or holds no notes is skipped and counted in
    one line (or, without `skip_bad_files`, a UserError).
    """
    files = source_files(source, max_pieces=max_pieces)
    listing = []
    for path in files:
        stat = path.stat()
        listing.append(f"{path}\x00{stat.st_size}\x00{stat.st_mtime_ns}")
    key = hashlib.sha256("\n".join([CACHE_VERSION, source, str(skip_bad_files), *listing]).encode()).hexdigest()
    folder = Path(cache_dir) / f"pieces-{key[:16]}"
    if _progress(folder)["files"] < len(files):
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process parsing the same files: wait, then reuse
            progress = _progress(folder)
            if progress["files"] < len(files):
                _parse_into(folder, files, progress, source=source, skip_bad_files=skip_bad_files)
    store = PieceStore(folder)
    if len(store) < MIN_PIECES:
        why = f" ({len(store.skipped)} of {store.files} files skipped: {store.skipped[0][1]})" if store.skipped else ""
        raise UserError(f"--data {source}: {len(store)} pieces with notes{why}; need at least {MIN_PIECES} "
                        "(train/val/test)")
    if (line := store.skipped_line()) is not None:
        console.print(line, soft_wrap=True)
    return store


def _progress(folder: Path) -> dict[str, int]:
    """What the store's last commit holds (all zero for a new store)."""
    path = folder / "progress.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"files": 0, "pieces": 0, "notes_bytes": 0, "codes_bytes": 0, "pieces_bytes": 0, "skipped_bytes": 0}


def _parse_into(folder: Path, files: list[Path], progress: dict[str, int], *, source: str,
                skip_bad_files: bool) -> None:
    """Parse `files[progress['files']:]` and append them to the store, committing as it goes."""
    with contextlib.ExitStack() as stack:
        handles = {name: stack.enter_context(open(folder / name, "ab")) for name in _STORE_FILES}
        for name, handle in handles.items():  # drop what an interrupted run wrote after its last commit
            handle.truncate(progress[name.split(".")[0] + "_bytes"])
        pieces = progress["pieces"]
        bar = stack.enter_context(progress_bar(enabled=True))
        task = bar.add_task("music: reading pieces", total=len(files), completed=progress["files"], status=source)
        for i in range(progress["files"], len(files)):
            path = files[i]
            try:
                name, grid = _read(path, source)
            except UserError as err:
                if not skip_bad_files:
                    bar.remove_task(task)  # the error stays the only line on screen
                    raise UserError(f"{err} (or set data.skip_bad_files=true to skip such files)") from None
                handles["skipped.jsonl"].write((json.dumps([str(path), str(err)]) + "\n").encode())
            else:
                if len(grid.notes):
                    codes = encode_array(grid.notes, max_beat=10**9)
                    handles["notes.i32"].write(grid.notes.astype("<i4").tobytes())
                    handles["codes.i32"].write(codes.astype("<i4").tobytes())
                    row = [name, len(grid.notes), len(codes), grid.qpm, grid.beats_per_bar]
                    handles["pieces.jsonl"].write((json.dumps(row) + "\n").encode())
                    pieces += 1
            bar.update(task, advance=1)
            if (i + 1) % CHECKPOINT_FILES == 0 or i + 1 == len(files):
                _commit(folder, handles, files=i + 1, pieces=pieces)
        if pieces < MIN_PIECES:
            bar.remove_task(task)  # the error that follows stays the only line on screen


def _commit(folder: Path, handles: dict[str, Any], *, files: int, pieces: int) -> None:
    """Flush the appended bytes to disk, then record how many files they hold (atomically)."""
    progress: dict[str, int] = {"files": files, "pieces": pieces}
    for name, handle in handles.items():
        handle.flush()
        os.fsync(handle.fileno())
        progress[name.split(".")[0] + "_bytes"] = handle.tell()
    write_text_atomic(folder / "progress.json", json.dumps(progress))


def split_pieces(
    names: Sequence[str], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Shuffle whole pieces (by name) with `seed` and cut them into train/val/test index lists (at least
    one piece each)."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def fingerprint(store: PieceStore, groups: dict[str, list[int]], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for name in ("train", "val", "test"):
        for i in groups[name]:
            h.update(f"{name}\x00{store.names[i]}\x00{store.note_counts[i]}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


# --- windows -------------------------------------------------------------------------------------


def mmt_spans(codes: np.ndarray, *, max_len: int, max_beat: int, stride: float,
              name: str = "piece") -> list[tuple[int, int, int]]:
    """Where `mmt_windows` cuts a piece's events `codes` (its whole MMT encoding): (start, length,
    beat shift) of each window's notes, counted in the notes after the header."""
    header_end = int(np.flatnonzero(codes[:, TYPE] == SON)[0]) + 1
    beats = np.asarray(codes[header_end:-1, BEAT])
    per_window = max_len - header_end - 1
    if per_window < 1:
        raise UserError(f"{name}: {header_end - 2} instruments leave no room for notes in "
                        f"windows of {max_len} events; raise data.max_len")
    step = max(1, int(per_window * stride))
    spans, start = [], 0
    while start < len(beats):
        chunk = beats[start:start + per_window]
        shift = int(chunk[0]) - 1 if start > 0 else 0
        beyond = np.flatnonzero(chunk - shift > max_beat + 1)  # beat code = beat + 1
        length = int(beyond[0]) if len(beyond) else len(chunk)
        if length == 0:  # a single silence longer than max_beat: skip the note
            start += 1
            continue
        spans.append((start, length, shift))
        if start + length >= len(beats):
            break
        start += min(step, length)
    return spans


def mmt_window(codes: np.ndarray, span: tuple[int, int, int]) -> np.ndarray:
    """One window (L, 6) of a piece's events: the song header, the span's notes with their beats shifted
    to start at beat 0, and end-of-song when the span holds the last note."""
    header_end = int(np.flatnonzero(codes[:, TYPE] == SON)[0]) + 1
    start, length, shift = span
    chunk = np.array(codes[header_end + start:header_end + start + length], dtype=np.int64)
    chunk[:, BEAT] -= shift
    ends = start + length >= len(codes) - header_end - 1
    tail = [np.asarray([[EOS, 0, 0, 0, 0, 0]])] if ends else []
    return np.concatenate([np.asarray(codes[:header_end], dtype=np.int64), chunk, *tail])


def mmt_windows(piece: Piece, *, max_len: int, max_beat: int, stride: float) -> list[np.ndarray]:
    """Codes of `piece` cut into windows of at most `max_len` events.

    Every window starts with the song header (start-of-song, the piece's instruments, start-of-notes);
    a window that does not start at the first note has its beats shifted so that it starts at beat 0.
    Only the window holding the last note ends with end-of-song. `stride` is the step between windows
    as a fraction of the notes a window holds (1.0: disjoint windows, every note scored once).
    """
    codes = encode_notes(piece.notes, max_beat=10**9)
    return [mmt_window(codes, span) for span in mmt_spans(codes, max_len=max_len, max_beat=max_beat,
                                                          stride=stride, name=piece.name)]


class WindowDataset(Dataset):
    """Items {"codes": (L, F) int64}: windows held in memory (F = 6 for MMT, 1 for REMI tokens)."""

    def __init__(self, windows: Sequence[np.ndarray], pieces: Sequence[Piece]) -> None:
        self.windows = [torch.from_numpy(np.asarray(w, dtype=np.int64)) for w in windows]
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"codes": self.windows[index]}


class StoreWindows(Dataset):
    """Items {"codes": (L, 6) int64}: MMT windows of some pieces of a store, cut from its memory map when
    read. Holds only the window index (piece, start, length, shift), W rows of four numbers."""

    def __init__(self, store: PieceStore, indices: Sequence[int], *, max_len: int, max_beat: int,
                 stride: float) -> None:
        self.store, self.pieces = store, PieceList(store, indices)
        rows = [(i, *span) for i in indices
                for span in mmt_spans(store.codes(i), max_len=max_len, max_beat=max_beat, stride=stride,
                                      name=store.names[i])]
        self.index = np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        piece, *span = self.index[index].tolist()
        return {"codes": torch.from_numpy(mmt_window(self.store.codes(piece), tuple(span)))}


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad windows at the end: codes (B, L, F) with zeros, valid (B, L) True on real events."""
    length = max(item["codes"].shape[0] for item in items)
    fields = items[0]["codes"].shape[1]
    codes = torch.zeros(len(items), length, fields, dtype=torch.long)
    valid = torch.zeros(len(items), length, dtype=torch.bool)
    for i, item in enumerate(items):
        n = item["codes"].shape[0]
        codes[i, :n], valid[i, :n] = item["codes"], True
    return {"codes": codes, "valid": valid}


def header_codes(instruments: Sequence[str]) -> np.ndarray:
    """start-of-song, the instruments (sorted by code), start-of-notes."""
    codes = sorted({instrument_code(name) for name in instruments})
    return np.asarray([[SOS, 0, 0, 0, 0, 0], *([1, 0, 0, 0, 0, c] for c in codes), [SON, 0, 0, 0, 0, 0]],
                      dtype=np.int64)
