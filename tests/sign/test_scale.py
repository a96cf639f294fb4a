"""ASL-Signs folders at scale: the face mesh is read past, memory for parsed sequences is bounded in bytes,
and corrupt landmark files are reported in one line each, skipped and counted in log.jsonl, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from panformer.sign import data as sign_data
from panformer.sign.data import SignDataset, read_label_file
from panformer.sign.landmarks import PART_SIZES, read_landmarks, write_landmarks
from panformer.sign.synthetic import SIGNS, perform
from tests.sign.helpers import cli


def asl_signs_folder(root, *, participants: int = 5, per_participant: int = 4) -> list:
    """The Kaggle layout: train.csv (path, participant_id, sequence_id, sign) and one Parquet per sequence
    with every part (face included). Three files are then broken; returns them."""
    rows = []
    for p in range(participants):
        for k in range(per_participant):
            sign = SIGNS[k % 2]
            landmarks = perform(sign, np.random.default_rng([p, k]))
            landmarks.parts["face"] = np.random.default_rng(k).random((landmarks.num_frames, 468, 3), np.float32)
            sequence = 1000 * p + k
            path = f"train_landmark_files/{p}/{sequence}.parquet"
            write_landmarks(root / path, landmarks)
            rows.append({"path": path, "participant_id": p, "sequence_id": sequence, "sign": sign.name})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    text, cut, columns = (root / rows[i]["path"] for i in (1, 6, 11))
    text.write_text("not parquet")
    cut.write_bytes(cut.read_bytes()[:500])
    pd.DataFrame({"frame": [0], "kind": ["pose"]}).to_parquet(columns)
    return [text, cut, columns]


def test_training_reads_hands_and_pose_only(tmp_path):
    landmarks = perform(SIGNS[0], np.random.default_rng(0))
    landmarks.parts["face"] = np.zeros((landmarks.num_frames, 468, 3), np.float32)
    write_landmarks(tmp_path / "seq.parquet", landmarks)
    kept = read_landmarks(tmp_path / "seq.parquet", parts=sign_data.TRAINED_PARTS)
    assert set(kept.parts) == {"left_hand", "pose", "right_hand"}
    for part in kept.parts:
        np.testing.assert_array_equal(kept.parts[part], landmarks.parts[part])
    assert set(read_landmarks(tmp_path / "seq.parquet").parts) == set(PART_SIZES)


def test_parsed_sequences_kept_in_memory_are_bounded_in_bytes(tmp_path, monkeypatch):
    asl_signs_folder(tmp_path)
    items = [item for item in read_label_file(tmp_path / "train.csv")][:1] * 10
    one = sum(a.nbytes for a in read_landmarks(items[0].path, parts=sign_data.TRAINED_PARTS).parts.values())
    monkeypatch.setattr(sign_data, "CACHE_BYTES", 3 * one)
    dataset = SignDataset(items, [SIGNS[0].name, SIGNS[1].name], max_frames=32, augmentation=None)
    for i in range(len(dataset)):
        dataset[i]
    assert len(dataset.cache) == 3 and dataset.cache_bytes <= 3 * one


def test_corrupt_files_are_reported_once_and_skipped(tmp_path, capsys):
    bad = asl_signs_folder(tmp_path)
    items = read_label_file(tmp_path / "train.csv")
    dataset = SignDataset(items, [SIGNS[0].name, SIGNS[1].name], max_frames=32, augmentation=None)
    for _ in range(2):
        batch = [dataset[i] for i in range(len(dataset))]
    assert all(item["features"].shape[1] == batch[0]["features"].shape[1] for item in batch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and len(dataset.skipped) == 3, lines
    for path, line in zip(bad, lines, strict=True):
        assert line.startswith("skipped: ") and str(path) in line


@pytest.mark.slow
def test_train_skips_corrupt_files_in_loader_workers_and_logs_the_count(tmp_path):
    bad = asl_signs_folder(tmp_path / "data", participants=6)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "description: tiny\n"
        "data: {max_frames: 16, val_signers: 0.2, test_signers: 0.2}\n"
        "model: {name: tslformer, dim: 16, depth: 1, num_heads: 2, dropout: 0.0}\n"
        "train: {epochs: 2, batch_size: 4, device: cpu, num_workers: 2}\n"
    )
    result = cli("train", "--recipe", str(recipe), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3, result.stderr  # every file is read by the end (the test split last)
    # Each epoch reads all of train and validation: their bad files are counted from the first epoch on.
    config = json.loads(next((tmp_path / "run" / "checkpoints").glob("epoch-0001/config.json")).read_text())
    seen = set(config["info"]["signers"]["train"]) | set(config["info"]["signers"]["val"])
    expected = sum(path.parent.name in seen for path in bad)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_items"] for r in records] == [expected, expected], result.stderr
