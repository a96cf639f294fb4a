"""Separation datasets: LibriMix/WHAM! folders, flat sample folders, and dynamic mixing of utterances.

An item is {"mixture": (T,), "sources": (S, T), "length": int}; `collate` pads a batch to its longest
item: {"mixture": (B, T), "sources": (B, S, T), "lengths": (B,)}. All audio is mono at the model's rate.

Layouts:
- LibriMix / WHAM!: <root>/<split>/{mix_clean, s1, s2[, s3]}/<id>.wav with splits named train-360 /
  train-100 / train / tr, dev / cv, test / tt. A LibriMix metadata CSV (<root>/metadata/
  mixture_<split>_mix_clean.csv or <root>/<split>/*.csv with a `mixture_ID` column) fixes the item list
  when present; otherwise every file of mix_clean/ is an item. Start-up lists each folder once (one
  `scandir` and one size per file, no audio header read): it grows linearly with the folder.
- flat: <folder>/itemN_mix.wav with itemN_source1.wav ... itemN_sourceS.wav beside it (evaluation only).
- utterances: <folder>/<speaker>/*.wav (or the synthetic corpus): mixtures made on the fly.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.engine.skips import SkippedItems
from panformer.speech.audio import AUDIO_SUFFIXES, read_audio, read_mono, resample

LIBRIMIX_SPLITS = {
    "train": ("train-360", "train-100", "train", "tr"),
    "val": ("dev", "cv", "val"),
    "test": ("test", "tt"),
}
FLAT_MIX = re.compile(r"^(?P<item>.+)_mix$")


@dataclass(frozen=True)
class MixtureItem:
    """One pre-mixed example on disk: the mixture and its S reference sources."""

    mixture: Path
    sources: tuple[Path, ...]


@lru_cache(maxsize=2048)
def load_utterance(path: Path, sample_rate: int) -> Tensor:
    """A mono utterance at `sample_rate` (cached: dynamic mixing reads the same files many times)."""
    return read_audio(path, sample_rate)


def pad_or_crop(wave: Tensor, length: int, *, start: int) -> Tensor:
    """`length` samples of `wave` from `start` (zero padded past its end)."""
    piece = wave[start : start + length]
    return torch.nn.functional.pad(piece, (0, length - piece.shape[-1]))


class MixtureFolderDataset(Dataset):
    """Pre-mixed examples (LibriMix, WHAM!, flat samples).

    Files are read when their item is, never checked up front. An item with an unreadable file (empty,
    damaged header, undecodable samples) or whose files disagree on the sample rate is reported in one
    line naming the file and replaced by the next readable item; `skipped` counts them.

    Args:
        items: mixtures with their sources.
        sample_rate: the model's rate (files at other rates are resampled, multichannel downmixed).
        segment: crop to this many samples at a random offset (training); None = whole mixtures.
    """

    def __init__(self, items: Sequence[MixtureItem], *, sample_rate: int, segment: int | None = None) -> None:
        self.items, self.sample_rate, self.segment = items, sample_rate, segment
        self.skipped = SkippedItems(len(items))

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, index: int) -> tuple[Tensor, Tensor]:
        """Item `index` as mixture (T,) and sources (S, T) at the model's rate, or a UserError naming the file."""
        item = self.items[index]
        paths = (item.mixture, *item.sources)
        waves = [read_mono(p) for p in paths]
        rates = [rate for _, rate in waves]
        usual = max(rates, key=rates.count)
        for path, rate in zip(paths, rates, strict=True):
            if rate != usual:
                raise UserError(f"{path}: sampled at {rate} Hz, the other files of its mixture at {usual} Hz; "
                                "resample it or remove the mixture")
        tensors = [resample(torch.from_numpy(wave), usual, self.sample_rate) for wave, _ in waves]
        length = min(t.shape[-1] for t in tensors)
        return tensors[0][:length], torch.stack([t[:length] for t in tensors[1:]])

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        mixture, sources = self.skipped.read(index, self._read)
        length = mixture.shape[-1]
        if self.segment is not None and length > self.segment:
            # The global RNG (seeded by the engine, restored on resume) picks a new crop every epoch.
            start = int(torch.randint(0, length - self.segment + 1, ()))
            mixture, sources = mixture[start : start + self.segment], sources[:, start : start + self.segment]
            length = self.segment
        return {"mixture": mixture, "sources": sources, "length": length}


class DynamicMixDataset(Dataset):
    """Mixtures made on the fly from single-speaker utterances.

    Each item takes `num_speakers` different speakers, one utterance each, places every utterance at a
    random offset in a `segment`-sample window (cropping longer ones at a random start), normalises its
    loudness and applies a random gain in [-gain_db, +gain_db] dB, then sums.

    Args:
        speakers: speaker name -> utterance files.
        length: items per epoch.
        seed: None draws from the global RNG (new mixtures every epoch, reproducible through the
            engine's seeding and resume); an int fixes item i for ever (validation and test sets).
    """

    def __init__(
        self,
        speakers: dict[str, list[Path]],
        *,
        length: int,
        num_speakers: int,
        segment: int,
        sample_rate: int,
        gain_db: float = 2.5,
        seed: int | None = None,
    ) -> None:
        self.speakers = {name: files for name, files in sorted(speakers.items()) if files}
        if len(self.speakers) < num_speakers:
            raise UserError(
                f"dynamic mixing of {num_speakers} speakers needs at least {num_speakers} speakers with "
                f"utterances; found {len(self.speakers)}"
            )
        self.names = list(self.speakers)
        self.length, self.num_speakers, self.segment = length, num_speakers, segment
        self.sample_rate, self.gain_db, self.seed = sample_rate, gain_db, seed

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        if self.seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        else:
            seed = self.seed * 1_000_003 + index
        return torch.Generator().manual_seed(seed)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        rng = self._generator(index)
        chosen = torch.randperm(len(self.names), generator=rng)[: self.num_speakers].tolist()
        sources = []
        for speaker in chosen:
            files = self.speakers[self.names[speaker]]
            wave = load_utterance(files[int(torch.randint(len(files), (), generator=rng))], self.sample_rate)
            n = wave.shape[-1]
            if n >= self.segment:
                start = int(torch.randint(0, n - self.segment + 1, (), generator=rng))
                placed = wave[start : start + self.segment]
            else:
                offset = int(torch.randint(0, self.segment - n + 1, (), generator=rng))
                placed = torch.nn.functional.pad(wave, (offset, self.segment - n - offset))
            rms = placed.pow(2).mean().sqrt().clamp(min=1e-6)
            gain_db = (torch.rand((), generator=rng) * 2 - 1) * self.gain_db
            sources.append(placed / rms * 0.05 * 10 ** (gain_db / 20))
        stacked = torch.stack(sources)
        mixture = stacked.sum(0)
        # One common scale keeps every ratio (and so every score) unchanged and avoids clipping.
        scale = min(1.0, 0.9 / float(mixture.abs().max().clamp(min=1e-6)))
        return {"mixture": mixture * scale, "sources": stacked * scale, "length": self.segment}


def collate(items: list[dict]) -> dict[str, Tensor]:
    """Pad a batch to its longest item: mixture (B, T), sources (B, S, T), lengths (B,)."""
    longest = max(int(item["length"]) for item in items)
    return {
        "mixture": torch.stack([pad_or_crop(item["mixture"], longest, start=0) for item in items]),
        "sources": torch.stack([pad_or_crop(item["sources"], longest, start=0) for item in items]),
        "lengths": torch.tensor([int(item["length"]) for item in items]),
    }


# --- finding the files ---------------------------------------------------------------------------


def _audio_in(folder: Path) -> dict[str, str]:
    """stem -> file name of every audio file directly in `folder`, from one listing, names sorted as
    strings (no object per file: pathlib's paths and comparisons were most of start-up's cost)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries)
    found = {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in AUDIO_SUFFIXES:
            found[stem] = name
    return found


@dataclass(frozen=True)
class MixtureFiles(Sequence[MixtureItem]):
    """Mixtures as an index of file names, not of paths: item i is `folders[0] / names[0][i]` (the mixture)
    with sources `folders[k] / names[k][i]`; its `MixtureItem` is built when asked for."""

    folders: tuple[Path, ...]
    names: tuple[list[str], ...]

    def __len__(self) -> int:
        return len(self.names[0])

    def __getitem__(self, index: int) -> MixtureItem:
        mixture, *sources = (folder / names[index] for folder, names in zip(self.folders, self.names, strict=True))
        return MixtureItem(mixture, tuple(sources))

    def sizes(self) -> Iterator[tuple[str, int]]:
        """(file name, bytes) of every file, item by item, mixture first (one `stat` each)."""
        folders = [os.fspath(f) for f in self.folders]
        for index in range(len(self)):
            for folder, names in zip(folders, self.names, strict=True):
                yield names[index], os.stat(os.path.join(folder, names[index])).st_size


def flat_items(folder: Path, *, num_speakers: int) -> MixtureFiles:
    """itemN_mix.wav + itemN_source1..S.wav in one folder, in natural order of N."""
    files = _audio_in(folder)
    matches = ((match["item"], stem) for stem in files if (match := FLAT_MIX.match(stem)))
    mixtures = sorted(matches, key=lambda pair: _natural_key(pair[1]))
    names: tuple[list[str], ...] = tuple([] for _ in range(num_speakers + 1))
    for item, stem in mixtures:
        sources = [files.get(f"{item}_source{k}") for k in range(1, num_speakers + 1)]
        if any(s is None for s in sources):
            raise UserError(f"{folder / files[stem]}: the flat layout needs {item}_source1 ... _source{num_speakers} "
                            "beside it")
        for column, name in zip(names, (files[stem], *sources), strict=True):
            column.append(name)
    return MixtureFiles((folder,) * (num_speakers + 1), names)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def is_librimix_root(folder: Path) -> bool:
    return any((folder / name / "mix_clean").is_dir() for names in LIBRIMIX_SPLITS.values() for name in names)


def _metadata_ids(root: Path, split_dir: Path) -> list[str] | None:
    candidates = [root / "metadata" / f"mixture_{split_dir.name}_mix_clean.csv", *sorted(split_dir.glob("*.csv"))]
    for path in candidates:
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and "mixture_ID" in rows[0]:
                return [row["mixture_ID"] for row in rows]
    return None


def librimix_items(root: Path, split: str, *, num_speakers: int) -> MixtureFiles:
    """The mixtures of one split ("train", "val", "test") of a LibriMix / WHAM! folder."""
    split_dir = next((root / n for n in LIBRIMIX_SPLITS[split] if (root / n / "mix_clean").is_dir()), None)
    if split_dir is None:
        names = " or ".join(LIBRIMIX_SPLITS[split])
        raise UserError(f"{root}: no {split} split; expected {names}/mix_clean/ (LibriMix or WHAM! layout)")
    folders = (split_dir / "mix_clean", *(split_dir / f"s{k}" for k in range(1, num_speakers + 1)))
    for d in folders[1:]:
        if not d.is_dir():
            raise UserError(f"{split_dir}: missing {d.name}/ for a {num_speakers}-speaker recipe")
    listings = [_audio_in(d) for d in folders]
    ids = _metadata_ids(root, split_dir) or list(listings[0])
    try:
        names = tuple([listing[mixture_id] for mixture_id in ids] for listing in listings)
    except KeyError as err:
        raise UserError(
            f"{split_dir}: mixture {err.args[0]} lacks its mix_clean/ or s1..s{num_speakers}/ file"
        ) from None
    return MixtureFiles(folders, names)


def speaker_folders(folder: Path) -> dict[str, list[Path]]:
    """<folder>/<speaker>/*.wav -> {speaker: files}."""
    speakers = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            speakers[sub.name] = files
    if not speakers:
        raise UserError(f"{folder}: no speaker folders with audio; expected <folder>/<speaker>/*.wav")
    return speakers


def file_sizes(paths: Iterable[Path]) -> Iterator[tuple[str, int]]:
    """(file name, bytes) of each path."""
    for path in paths:
        yield path.name, os.stat(path).st_size


def fingerprint(sizes: Iterable[tuple[str, int]], *extra: object) -> str:
    """sha256 over (file name, bytes) pairs and the settings that shape the data."""
    digest = hashlib.sha256(repr(extra).encode())
    for name, size in sizes:
        digest.update(f"{name}:{size};".encode())
    return "sha256:" + digest.hexdigest()[:16]
