"""Data layouts (LibriMix/WHAM!, flat), dynamic mixing, resampling and downmix, streamed reading."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from panformer.engine.errors import UserError
from panformer.speech.audio import StreamReader, read_audio
from panformer.speech.data import (
    DynamicMixDataset,
    MixtureFolderDataset,
    collate,
    flat_items,
    is_librimix_root,
    librimix_items,
)
from tests.speech.signals import speechlike, write_wav


def make_librimix(root, split, ids, *, speakers=2, seconds=0.5):
    for n, mixture_id in enumerate(ids):
        sources = [speechlike(seconds, pitch=120 + 40 * k, seed=n * 10 + k) for k in range(speakers)]
        for k, s in enumerate(sources):
            write_wav(root / split / f"s{k + 1}" / f"{mixture_id}.wav", s)
        write_wav(root / split / "mix_clean" / f"{mixture_id}.wav", sum(sources))


def test_librimix_layout_with_and_without_metadata(tmp_path):
    for split in ("train-100", "dev", "test"):
        make_librimix(tmp_path, split, ["b_1", "a_2", "c_3"])
    assert is_librimix_root(tmp_path)
    assert [i.mixture.stem for i in librimix_items(tmp_path, "test", num_speakers=2)] == ["a_2", "b_1", "c_3"]
    # A LibriMix metadata CSV fixes the order (and the subset) of the mixtures.
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "mixture_test_mix_clean.csv").write_text(
        "mixture_ID,mixture_path,source_1_path,source_2_path,length\nc_3,x,y,z,4000\nb_1,x,y,z,4000\n"
    )
    items = librimix_items(tmp_path, "test", num_speakers=2)
    assert [i.mixture.stem for i in items] == ["c_3", "b_1"]
    assert [p.parent.name for p in items[0].sources] == ["s1", "s2"]
    dataset = MixtureFolderDataset(items, sample_rate=8000)
    item = dataset[0]
    assert item["sources"].shape == (2, 4000)
    assert torch.allclose(item["sources"].sum(0), item["mixture"], atol=1e-6)
    with pytest.raises(UserError, match="s3"):
        librimix_items(tmp_path, "val", num_speakers=3)


def test_training_crops_are_random_segments(tmp_path):
    make_librimix(tmp_path, "train", ["x"], seconds=1.0)
    items = librimix_items(tmp_path, "train", num_speakers=2)
    dataset = MixtureFolderDataset(items, sample_rate=8000, segment=1000)
    torch.manual_seed(0)
    first, second = dataset[0], dataset[0]
    assert first["mixture"].shape == (1000,) and first["length"] == 1000
    assert not torch.equal(first["mixture"], second["mixture"])


def test_flat_layout_in_natural_order(tmp_path):
    for n in (10, 2, 1):
        write_wav(tmp_path / f"item{n}_mix.wav", speechlike(0.2, seed=n))
        for k in (1, 2):
            write_wav(tmp_path / f"item{n}_source{k}.wav", speechlike(0.2, seed=n + k))
        write_wav(tmp_path / f"item{n}_source1hat.wav", speechlike(0.2))  # estimates are not items
    items = flat_items(tmp_path, num_speakers=2)
    assert [i.mixture.stem for i in items] == ["item1_mix", "item2_mix", "item10_mix"]
    with pytest.raises(UserError, match="source3"):
        flat_items(tmp_path, num_speakers=3)


def utterance_speakers(tmp_path, count=4):
    speakers = {}
    for s in range(count):
        speakers[f"spk{s}"] = [
            write_wav(tmp_path / f"spk{s}" / f"{u}.wav", speechlike(0.3 + 0.2 * u, pitch=100 + 30 * s, seed=s * 7 + u))
            for u in range(3)
        ]
    return speakers


def test_dynamic_mixing_is_deterministic_by_seed(tmp_path):
    speakers = utterance_speakers(tmp_path)
    make = lambda seed: DynamicMixDataset(speakers, length=5, num_speakers=3, segment=4000, sample_rate=8000, seed=seed)  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    for i in range(5):
        assert torch.equal(a[i]["mixture"], b[i]["mixture"])
        assert torch.equal(a[i]["sources"], a[i]["sources"])
    assert not torch.equal(a[0]["mixture"], c[0]["mixture"])
    item = a[0]
    assert item["sources"].shape == (3, 4000)
    assert torch.allclose(item["sources"].sum(0), item["mixture"], atol=1e-6)
    assert item["mixture"].abs().max() <= 0.9 + 1e-6
    # Different speakers in every mixture: no source is a copy of another.
    assert all(not torch.allclose(item["sources"][i], item["sources"][j]) for i in range(3) for j in range(i))


def test_dynamic_mixing_on_the_fly_follows_the_global_seed(tmp_path):
    speakers = utterance_speakers(tmp_path)
    dataset = DynamicMixDataset(speakers, length=4, num_speakers=2, segment=3000, sample_rate=8000, seed=None)
    torch.manual_seed(7)
    first = [dataset[i]["mixture"] for i in range(4)]
    torch.manual_seed(7)
    again = [dataset[i]["mixture"] for i in range(4)]
    later = [dataset[i]["mixture"] for i in range(4)]  # the next epoch: new mixtures
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, later, strict=True))


def test_dynamic_mixing_needs_enough_speakers(tmp_path):
    speakers = utterance_speakers(tmp_path, count=2)
    with pytest.raises(UserError, match="at least 3 speakers"):
        DynamicMixDataset(speakers, length=1, num_speakers=3, segment=100, sample_rate=8000)


def test_collate_pads_and_keeps_lengths():
    items = [{"mixture": torch.ones(5), "sources": torch.ones(2, 5), "length": 5},
             {"mixture": torch.ones(3), "sources": torch.ones(2, 3), "length": 3}]
    batch = collate(items)
    assert batch["mixture"].shape == (2, 5) and batch["sources"].shape == (2, 2, 5)
    assert batch["lengths"].tolist() == [5, 3] and float(batch["mixture"][1, 3:].abs().sum()) == 0


def test_resampling_and_downmix(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo16k.flac"
    sf.write(str(path), np.stack([left, right], axis=1).astype(np.float32), rate)
    wave = read_audio(path, 8000)
    assert wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins over one second
    assert float(wave[1000:7000].abs().max()) == pytest.approx(0.75, abs=0.02)  # mean of the channels


@pytest.mark.parametrize("rate", [44100, 8000])
def test_streamed_reading_equals_whole_file(tmp_path, rate):
    path = write_wav(tmp_path / "long.wav", speechlike(2.3, rate=rate), rate=rate)
    whole = read_audio(path, 8000)
    reader = StreamReader(path, 8000)
    assert reader.num_frames == whole.shape[0]
    pieces = torch.cat([reader.read(s, min(s + 1777, reader.num_frames)) for s in range(0, reader.num_frames, 1777)])
    assert torch.allclose(pieces, whole, atol=1e-5)
    assert float(reader.read(reader.num_frames - 2, reader.num_frames + 3)[2:].abs().sum()) == 0
