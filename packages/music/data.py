"""Datasets of pieces: folders of MIDI files and the music21 corpus, cached, split by piece, windowed.

Sources (`data.source` or `train --data`):
- `music21:bach` (or `music21:bach,haydn`): pieces of the composers in the corpus music21's wheel ships
  (Bach chorales, Palestrina, Haydn/Mozart/Beethoven quartets ...), offline;
- a folder: every `.mid`/`.midi` file below it.

Parsed pieces are cached as one `.npz` (no pickle) under `data.cache_dir`, keyed by the source and the
files' names and sizes. Splits hold whole pieces, so no piece is both trained and tested on.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.runlog import console, progress_bar
from panformer.music.midi import MIDI_SUFFIXES, Piece, read_midi, read_music21
from panformer.music.representation import (
    BEAT,
    EOS,
    INSTRUMENTS,
    SON,
    SOS,
    Note,
    encode_notes,
    instrument_code,
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


def _read(path: Path, source: str) -> Piece:
    if source.startswith(MUSIC21_PREFIX):
        from music21 import corpus

        root = Path(corpus.__file__).parent
        name = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
        return read_music21(corpus.parse(str(path)), name)
    return read_midi(path)


def load_pieces(source: str, *, cache_dir: Path, max_pieces: int | None = None,
                skip_bad_files: bool = False) -> list[Piece]:
    """Every piece of `source` (parsed once, then read from the cache).

    A file that is not MIDI or holds no notes is a UserError, or, with `skip_bad_files`, a warning.
    """
    files = source_files(source, max_pieces=max_pieces)
    key = hashlib.sha256("\n".join([source, str(skip_bad_files),
                                    *(f"{p}\x00{p.stat().st_size}" for p in files)]).encode()).hexdigest()
    cache = Path(cache_dir) / f"pieces-{key[:16]}.npz"
    if cache.is_file():
        return _read_cache(cache)
    pieces = []
    with progress_bar(enabled=True) as bar:
        task = bar.add_task("music: reading pieces", total=len(files), status=source)
        for path in files:
            try:
                piece = _read(path, source)
            except UserError as err:
                if skip_bad_files:
                    console.print(f"warning: skipped {err}")
                    bar.update(task, advance=1)
                    continue
                bar.remove_task(task)  # the error stays the only line on screen
                raise
            if piece.notes:
                pieces.append(piece)
            bar.update(task, advance=1)
    if len(pieces) < 3:
        raise UserError(f"--data {source}: {len(pieces)} pieces with notes; need at least 3 (train/val/test)")
    _write_cache(cache, pieces)
    console.print(f"music: cached {len(pieces)} pieces in {cache}")
    return pieces


def _write_cache(path: Path, pieces: list[Piece]) -> None:
    notes = np.asarray([(n.beat, n.position, n.pitch, n.duration, instrument_code(n.instrument))
                        for piece in pieces for n in piece.notes], dtype=np.int64).reshape(-1, 5)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, notes=notes, counts=np.asarray([len(p.notes) for p in pieces]),
                 names=np.asarray([p.name for p in pieces]), qpm=np.asarray([p.qpm for p in pieces]),
                 beats_per_bar=np.asarray([p.beats_per_bar for p in pieces]))


def _read_cache(path: Path) -> list[Piece]:
    with np.load(path, allow_pickle=False) as z:
        notes, counts, names = z["notes"], z["counts"], z["names"]
        qpm, bars = z["qpm"], z["beats_per_bar"]
    pieces, start = [], 0
    for i, count in enumerate(counts):
        rows = notes[start:start + count]
        start += count
        pieces.append(Piece(str(names[i]), [Note(int(b), int(p), int(h), int(d), INSTRUMENTS[int(c) - 1])
                                            for b, p, h, d, c in rows], qpm=float(qpm[i]),
                            beats_per_bar=float(bars[i])))
    return pieces


def split_pieces(
    pieces: list[Piece], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Piece]]:
    """Shuffle whole pieces with `seed` and cut them into train/val/test (at least one piece each)."""
    order = sorted(pieces, key=lambda p: p.name)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def fingerprint(splits: dict[str, list[Piece]], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for name in ("train", "val", "test"):
        for piece in splits[name]:
            h.update(f"{name}\x00{piece.name}\x00{len(piece.notes)}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


# --- windows -------------------------------------------------------------------------------------


def mmt_windows(piece: Piece, *, max_len: int, max_beat: int, stride: float) -> list[np.ndarray]:
    """Codes of `piece` cut into windows of at most `max_len` events.

    Every window starts with the song header (start-of-song, the piece's instruments, start-of-notes);
    a window that does not start at the first note has its beats shifted so that it starts at beat 0.
    Only the window holding the last note ends with end-of-song. `stride` is the step between windows
    as a fraction of the notes a window holds (1.0: disjoint windows, every note scored once).
    """
    full = encode_notes(piece.notes, max_beat=10**9)
    header_end = int(np.flatnonzero(full[:, 0] == SON)[0]) + 1
    header, body = full[:header_end], full[header_end:-1]
    per_window = max_len - len(header) - 1
    if per_window < 1:
        raise UserError(f"{piece.name}: {len(header) - 2} instruments leave no room for notes in "
                        f"windows of {max_len} events; raise data.max_len")
    step = max(1, int(per_window * stride))
    windows, start = [], 0
    while start < len(body):
        chunk = body[start:start + per_window].copy()
        shift = chunk[0, BEAT] - 1 if start > 0 else 0
        chunk[:, BEAT] -= shift
        keep = chunk[:, BEAT] <= max_beat + 1  # beat code = beat + 1
        if not keep.all():
            chunk = chunk[: int(np.argmin(keep))]
        if len(chunk) == 0:  # a single silence longer than max_beat: skip the note
            start += 1
            continue
        ends = start + len(chunk) >= len(body)
        tail = [np.asarray([[EOS, 0, 0, 0, 0, 0]])] if ends else []
        windows.append(np.concatenate([header, chunk, *tail]))
        if ends:
            break
        start += min(step, len(chunk))
    return windows


class WindowDataset(Dataset):
    """Items {"codes": (L, F) int64}: windows of every piece (F = 6 for MMT, 1 for REMI tokens)."""

    def __init__(self, windows: Sequence[np.ndarray], pieces: list[Piece]) -> None:
        self.windows = [torch.from_numpy(np.asarray(w, dtype=np.int64)) for w in windows]
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"codes": self.windows[index]}


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
