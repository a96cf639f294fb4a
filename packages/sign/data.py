"""Labelled landmark datasets: a label CSV (`path, label, signer`, or ASL Signs' `train.csv`), the AUTSL
layout, and signer-independent splits."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from panformer.engine.errors import UserError
from panformer.engine.skips import SkippedItems
from panformer.sign.features import Augment, augment, sequence_features
from panformer.sign.landmarks import Landmarks, read_landmarks

# ASL Signs (Kaggle) names its columns differently: participant_id is the signer, sign the label.
ASL_SIGNS_COLUMNS = {"sign": "label", "participant_id": "signer"}


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    signer: str


def read_label_file(path: Path) -> list[Item]:
    """Read a label CSV; paths are relative to its folder. Every named file must exist."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label file not found; give a CSV with path, label, signer columns")
    table = pd.read_csv(path, dtype=str).rename(columns=ASL_SIGNS_COLUMNS)
    missing = [c for c in ("path", "label", "signer") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)}; expected path, label, signer "
                        "(or ASL Signs' path, participant_id, sign)")
    items = [Item(path.parent / row.path, str(row.label), str(row.signer)) for row in table.itertuples()]
    absent = [item.path for item in items if not item.path.is_file()]
    if absent:
        raise UserError(f"{path}: {len(absent)} listed files do not exist, e.g. {absent[0]}; fix the paths or the folder")
    if not items:
        raise UserError(f"{path}: the label file lists no files")
    return items


def is_autsl(folder: Path) -> bool:
    return Path(folder).is_dir() and (Path(folder) / "train_labels.csv").is_file()


def read_autsl(folder: Path, *, landmarks: str = "train_landmarks") -> list[Item]:
    """AUTSL (ChaLearn 2021): `train_labels.csv` (`signer<S>_sample<N>,<class id>`, no header), optional
    `SignList_ClassId_TR_EN.csv` (ClassId, TR, EN) for English sign names, and landmark files made by
    `panformer-sign extract <folder>/train --output <folder>/train_landmarks` (`<sample>_color.parquet`).
    """
    folder = Path(folder)
    labels = pd.read_csv(folder / "train_labels.csv", header=None, names=["sample", "class_id"], dtype=str)
    if labels.empty or labels["class_id"].isna().any():
        raise UserError(f"{folder / 'train_labels.csv'}: expected rows `signer<S>_sample<N>,<class id>`")
    names: dict[str, str] = {}
    sign_list = folder / "SignList_ClassId_TR_EN.csv"
    if sign_list.is_file():
        table = pd.read_csv(sign_list, dtype=str)
        if {"ClassId", "EN"} <= set(table.columns):
            names = dict(zip(table["ClassId"], table["EN"], strict=True))
    items = []
    for sample, class_id in zip(labels["sample"], labels["class_id"], strict=True):
        signer, sep, _ = sample.partition("_sample")
        if not sep:
            raise UserError(f"{folder / 'train_labels.csv'}: sample name {sample!r} is not signer<S>_sample<N>")
        items.append(Item(folder / landmarks / f"{sample}_color.parquet", names.get(class_id, class_id), signer))
    absent = [item.path for item in items if not item.path.is_file()]
    if absent:
        raise UserError(
            f"{folder}: {len(absent)} landmark files missing, e.g. {absent[0]}; run "
            f"`panformer-sign extract {folder / 'train'} --output {folder / landmarks}` first"
        )
    return items


def signer_split(items: list[Item], *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Item]]:
    """Disjoint signer groups: no validation or test signer is ever trained on."""
    signers = sorted({item.signer for item in items})
    if len(signers) < 3:
        raise UserError(f"signer-independent splits need at least 3 signers; the data has {len(signers)}")
    random.Random(seed).shuffle(signers)
    n_val = max(1, round(val_fraction * len(signers)))
    n_test = max(1, round(test_fraction * len(signers)))
    groups = {"val": set(signers[:n_val]), "test": set(signers[n_val : n_val + n_test]),
              "train": set(signers[n_val + n_test :])}
    return {split: [item for item in items if item.signer in group] for split, group in groups.items()}


def fingerprint(items: list[Item]) -> str:
    h = hashlib.sha256()
    for item in sorted(items, key=lambda i: str(i.path)):
        stat = item.path.stat()
        h.update(f"{item.path.name}\x00{item.label}\x00{item.signer}\x00{stat.st_size}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


# The body parts the features use (`sequence_features`): the face mesh is read past, never kept.
TRAINED_PARTS = ("left_hand", "pose", "right_hand")
# Parsed sequences kept in memory per dataset (re-reading Parquet every epoch dominates small datasets);
# a bound in bytes, not items, so memory stays flat however many sequences there are.
CACHE_BYTES = 64 * 2**20


class SignDataset(Dataset):
    """Items are {"features": (T, F), "valid": (T,), "target": ()}; training items are augmented.

    Files are read when their item is. An unreadable one (not Parquet, cut off, wrong columns) is reported
    in one line naming it and replaced by the next readable item; `skipped` counts them. The first
    sequences read are kept in memory up to `CACHE_BYTES`.
    """

    def __init__(self, items: list[Item], classes: list[str], *, max_frames: int, augmentation: Augment | None):
        self.items = items
        self.index = {c: i for i, c in enumerate(classes)}
        self.max_frames = max_frames
        self.augmentation = augmentation
        self.cache: dict[int, Landmarks] = {}
        self.cache_bytes = 0
        self.skipped = SkippedItems(len(items))

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, i: int) -> tuple[Landmarks, int]:
        landmarks = self.cache.get(i)
        if landmarks is None:
            landmarks = read_landmarks(self.items[i].path, parts=TRAINED_PARTS)
            size = sum(a.nbytes for a in landmarks.parts.values())
            if self.cache_bytes + size <= CACHE_BYTES:
                self.cache[i], self.cache_bytes = landmarks, self.cache_bytes + size
        return landmarks, i

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        landmarks, i = self.skipped.read(i, self._read)
        if self.augmentation is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))  # follows the engine's torch seed
            landmarks = augment(landmarks, rng, self.augmentation)
        features, valid = sequence_features(landmarks, max_frames=self.max_frames)
        if not valid.any():  # nobody seen at all: keep the (zero) frames rather than a fully masked sequence
            valid[:] = True
        return {"features": torch.from_numpy(features), "valid": torch.from_numpy(valid),
                "target": torch.tensor(self.index[self.items[i].label])}


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad to the longest sequence: features (B, T, F), valid (B, T) False on padding, target (B,)."""
    longest = max(item["features"].shape[0] for item in items)
    features = torch.zeros(len(items), longest, items[0]["features"].shape[1])
    valid = torch.zeros(len(items), longest, dtype=torch.bool)
    for b, item in enumerate(items):
        t = item["features"].shape[0]
        features[b, :t] = item["features"]
        valid[b, :t] = item["valid"]
    return {"features": features, "valid": valid, "target": torch.stack([item["target"] for item in items])}
