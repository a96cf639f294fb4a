"""The eSpeak NG synthetic corpus: real speech-like audio, split by voice variant, cached."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from panformer.speech.synth import CORPUS_VERSION, CorpusSpec, build_corpus, plan_speakers

SPEC = CorpusSpec(train_variants=3, val_variants=1, test_variants=1, languages_per_variant=2,
                  utterances_per_speaker=2, seed=3)


def test_speakers_are_split_by_variant():
    speakers = plan_speakers(CorpusSpec(seed=5))
    by_split = {split: {s.variant for s in speakers if s.split == split} for split in ("train", "val", "test")}
    assert len(by_split["train"]) == 56 and len(by_split["val"]) == 6 and len(by_split["test"]) == 8
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert not (by_split["val"] & by_split["test"])
    assert plan_speakers(CorpusSpec(seed=5)) == speakers  # deterministic


def test_corpus_is_synthesised_and_cached(tmp_path):
    folder = tmp_path / "corpus"
    manifest = build_corpus(folder, SPEC, workers=2)  # worker processes, as on a many-core machine
    assert len(manifest["speakers"]) == 10
    entry = next(iter(manifest["speakers"].values()))
    path = folder / entry["files"][0]
    wave, rate = sf.read(str(path))
    assert rate == 8000 and 0.3 < len(wave) / rate < 10
    assert np.abs(wave).max() > 0.1  # speech, not silence
    # Most energy of synthetic speech sits below 4 kHz's upper half, as for real speech.
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    assert spectrum[: len(spectrum) // 2].sum() > 0.8 * spectrum.sum()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert build_corpus(folder, SPEC) == json.loads((folder / "manifest.json").read_text())
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_parallel_and_serial_synthesis_plan_the_same_corpus(tmp_path):
    # eSpeak NG jitters its waveforms from call to call, so the audio is not bit-identical, but the
    # speakers, their splits and their files must agree.
    serial = build_corpus(tmp_path / "serial", SPEC, workers=1)
    parallel = build_corpus(tmp_path / "parallel", SPEC, workers=2)
    assert serial == parallel


def test_a_corpus_of_an_older_version_is_rebuilt(tmp_path):
    folder = tmp_path / "corpus"
    build_corpus(folder, SPEC, workers=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    assert build_corpus(folder, SPEC, workers=1)["version"] == CORPUS_VERSION
