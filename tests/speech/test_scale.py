"""LibriMix folders at scale: start-up cost per file stays constant (linear in the folder), and corrupt
files met during training are reported in one line each, skipped and counted in log.jsonl, never a crash."""

from __future__ import annotations

import json
import sys

import numpy as np
import soundfile as sf

from panformer.engine.config import validate_recipe
from panformer.speech.data import MixtureFolderDataset, librimix_items
from panformer.speech.domain import SeparationRecipe, SeparationTask
from tests.cli import cli_of
from tests.speech.signals import speechlike
from tests.speech.test_data import make_librimix

cli = cli_of("panformer.speech.cli")


def empty_librimix(root, mixtures: int) -> None:
    """A Libri2Mix layout of empty files (start-up lists and sizes files; it never reads them)."""
    for split, count in (("train-360", mixtures), ("dev", 2), ("test", 2)):
        for sub in ("mix_clean", "s1", "s2"):
            (root / split / sub).mkdir(parents=True)
            for i in range(count):
                (root / split / sub / f"{i:06d}_{i % 7}-{i % 5}.wav").touch()


def python_calls(work) -> int:
    """Python and C function calls made by `work()` (deterministic, unlike a timing on a shared machine)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_startup_work_per_file_is_constant(tmp_path):
    """Start-up used to sort pathlib paths (n log n comparisons, each a Python call) and make three Path
    objects per mixture: 77 calls per file on 60,000 files, and 15x the time for 10x the files."""
    task = SeparationTask()
    calls = {}
    for mixtures in (300, 1200):
        root = tmp_path / str(mixtures)
        empty_librimix(root, mixtures)
        recipe = validate_recipe(SeparationRecipe, {"data": {"source": str(root)}}, source="test")
        calls[mixtures] = python_calls(lambda recipe=recipe: task.load_splits(recipe))
    per_file = {n: c / (3 * n) for n, c in calls.items()}
    assert per_file[1200] < 25, per_file
    assert calls[1200] / calls[300] < 4.2, calls  # linear: 4x the files, 4x the work


def corrupt_librimix(root, *, mixtures: int = 8) -> list:
    """A Libri2Mix folder with three bad files in train: a cut-off header, an empty file, and a source at
    16 kHz beside an 8 kHz mixture. Returns the bad files."""
    for split in ("train-360", "dev", "test"):
        make_librimix(root, split, [f"m{i}" for i in range(mixtures if split == "train-360" else 2)], seconds=0.5)
    train = root / "train-360"
    cut = train / "mix_clean" / "m1.wav"
    cut.write_bytes(cut.read_bytes()[:30])
    empty = train / "s1" / "m4.wav"
    empty.write_bytes(b"")
    fast = train / "s2" / "m6.wav"
    sf.write(str(fast), np.repeat(speechlike(0.5), 2), 16000, subtype="FLOAT")
    return [cut, empty, fast]


def test_corrupt_files_are_reported_once_and_skipped(tmp_path, capsys):
    bad = corrupt_librimix(tmp_path)
    dataset = MixtureFolderDataset(librimix_items(tmp_path, "train", num_speakers=2), sample_rate=8000)
    for _ in range(2):  # a second epoch neither re-reads nor re-reports them
        items = [dataset[i] for i in range(len(dataset))]
    assert all(item["sources"].shape == (2, 4000) for item in items)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and len(dataset.skipped) == 3, lines
    for path, line in zip(bad, lines, strict=True):
        assert line.startswith("skipped: ") and str(path) in line
    assert "16000 Hz" in lines[2]


def test_train_skips_corrupt_files_in_loader_workers_and_logs_the_count(tmp_path):
    corrupt_librimix(tmp_path / "data")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "description: tiny\n"
        "data: {num_speakers: 2, segment_seconds: 0.25}\n"
        "model: {name: mossformer2, filters: 8, dim: 8, num_layers: 1, chunk_size: 16, query_key_dim: 4,\n"
        "        expansion_factor: 2.0, fsmn_channels: 4, fsmn_order: 2, dropout: 0.0}\n"
        "train: {epochs: 2, batch_size: 2, device: cpu, num_workers: 2}\n"
    )
    result = cli("train", "--recipe", str(recipe), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3, result.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_items"] for r in records] == [3, 3]
