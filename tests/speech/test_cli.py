"""The speech CLI end to end through real subprocesses: a tiny 3-speaker train -> evaluate -> predict,
and bad input answered with one line and exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cli import assert_user_error, cli_of
from tests.speech.signals import speechlike, write_wav

TINY_RECIPE = """\
description: tiny 3-speaker MossFormer2 for the tests
data:
  source: espeak
  cache_dir: {cache}
  corpus: {{train_variants: 2, val_variants: 1, test_variants: 1, languages_per_variant: 3, utterances_per_speaker: 2}}
  num_speakers: 3
  segment_seconds: 0.5
  eval_segment_seconds: 0.5
  train_mixtures: 4
  val_mixtures: 2
  test_mixtures: 2
  chunk_seconds: 1.0
  overlap_seconds: 0.25
model: {{name: mossformer2, filters: 16, dim: 16, num_layers: 1, chunk_size: 32, query_key_dim: 8,
         expansion_factor: 2.0, fsmn_channels: 8, fsmn_order: 4, dropout: 0.0}}
train: {{epochs: 1, batch_size: 2, device: cpu}}
"""


cli = cli_of("panformer.speech.cli")



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(cache=root / "corpus"))
    result = cli("train", "--recipe", str(recipe), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_train_writes_a_run_folder_with_separation_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"loss", "si_sdr", "si_sdri", "sdr", "sdri"}
    assert (run_dir / "checkpoints" / "BEST").is_file()


def test_evaluate_on_a_flat_folder(run_dir, tmp_path):
    for n in range(2):
        sources = [speechlike(0.6, pitch=110 + 60 * k, seed=10 * n + k) for k in range(3)]
        write_wav(tmp_path / f"item{n}_mix.wav", sum(sources))
        for k, s in enumerate(sources):
            write_wav(tmp_path / f"item{n}_source{k + 1}.wav", s)
    plot = tmp_path / "plots" / "eval.png"
    result = cli("evaluate", "--checkpoint", str(run_dir), "--data", str(tmp_path), "--json", "--device", "cpu",
                 "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.isfinite(metrics["si_sdri"]) and np.isfinite(metrics["sdri"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_predict_any_rate_and_channels_with_chunks_and_plot(run_dir, tmp_path):
    stereo = np.stack([speechlike(2.2, rate=22050), speechlike(2.2, rate=22050, pitch=240, seed=4)], axis=1)
    source = tmp_path / "in" / "talk.ogg"
    source.parent.mkdir()
    sf.write(str(source), stereo, 22050)
    out = tmp_path / "out"
    result = cli("predict", "--checkpoint", str(run_dir), "--input", str(source.parent), "--output", str(out),
                 "--num-speakers", "3", "--plot", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["talk_separation.png", "talk_spk1.wav", "talk_spk2.wav", "talk_spk3.wav"]
    info = sf.info(str(out / "talk_spk1.wav"))
    assert info.samplerate == 8000 and info.frames == int(np.ceil(stereo.shape[0] * 8000 / 22050))


@pytest.mark.parametrize(
    "case", ["not-audio", "empty", "zero-length", "silence", "wrong-speakers"],
)
def test_bad_input_is_exit_2_and_writes_nothing(run_dir, tmp_path, case):
    path = tmp_path / f"{case}.wav"
    extra: list[str] = []
    needle = str(path)
    if case == "not-audio":
        path.write_text("this is not a wav file\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "zero-length":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 8000)
    elif case == "silence":
        sf.write(str(path), np.zeros(8000, dtype=np.float32), 8000)
    else:
        write_wav(path, speechlike(0.5))
        extra, needle = ["--num-speakers", "2"], "--num-speakers 2"
    out = tmp_path / "out"
    result = cli("predict", "--checkpoint", str(run_dir), "--input", str(path), "--output", str(out), *extra)
    assert_user_error(result, needle)
    assert not out.exists()


def test_score_finds_predict_style_estimates(tmp_path):
    for n in range(2):
        sources = [speechlike(0.4, pitch=120 + 80 * k, seed=n + 3 * k) for k in range(2)]
        write_wav(tmp_path / "refs" / f"item{n}_mix.wav", sum(sources))
        for k, s in enumerate(sources):
            write_wav(tmp_path / "refs" / f"item{n}_source{k + 1}.wav", s)
            # A perfect separation, written in swapped order as `predict` may.
            write_wav(tmp_path / "est" / f"item{n}_mix_spk{2 - k}.wav", s)
    result = cli("score", "--estimates", str(tmp_path / "est"), "--references", str(tmp_path / "refs"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["count"] == 2 and summary["mean"]["si_sdri"] > 40
    missing = cli("score", "--estimates", str(tmp_path / "refs"), "--references", str(tmp_path / "refs"))
    assert_user_error(missing, "no estimates for item0_mix.wav")


def test_score_defaults_to_the_published_mossformer2_separations(libri2mix_samples):
    result = cli("score", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["count"] == 18 and abs(summary["mean"]["si_sdri"] - 21.70) < 0.05
