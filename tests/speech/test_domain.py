"""SeparationTask.load_splits for every data source, and recipe validation."""

from __future__ import annotations

import pytest

from panformer.engine.config import list_recipes, load_recipe, validate_recipe
from panformer.engine.errors import UserError
from panformer.speech.domain import SeparationRecipe, SeparationTask, SpeechDomain
from tests.speech.signals import speechlike, write_wav
from tests.speech.test_data import make_librimix


def recipe(**data) -> SeparationRecipe:
    return validate_recipe(SeparationRecipe, {"data": data, "train": {"seed": 3}}, source="test")


def test_utterance_folders_split_by_speaker(tmp_path):
    for s in range(10):
        for u in range(2):
            write_wav(tmp_path / f"spk{s}" / f"{u}.wav", speechlike(0.3, pitch=90 + 20 * s, seed=s * 5 + u))
    splits = SeparationTask().load_splits(
        recipe(source=f"utterances:{tmp_path}", speaker_split=(0.2, 0.3), train_mixtures=3, val_mixtures=2,
               test_mixtures=2, segment_seconds=0.25, eval_segment_seconds=0.25)
    )
    groups = {split: set(names) for split, names in splits.info["speakers"].items()}
    assert (len(groups["val"]), len(groups["test"]), len(groups["train"])) == (2, 3, 5)
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert splits.train[0]["sources"].shape == (2, 2000) and len(splits.test) == 2


def test_librimix_root_and_flat_folder(tmp_path):
    root = tmp_path / "Libri2Mix"
    for split in ("train-360", "dev", "test"):
        make_librimix(root, split, ["m1", "m2"], seconds=0.5)
    splits = SeparationTask().load_splits(recipe(source=str(root), segment_seconds=0.25))
    assert len(splits.train) == len(splits.val) == len(splits.test) == 2
    assert splits.train[0]["mixture"].shape == (2000,) and splits.test[0]["mixture"].shape == (4000,)
    for n in range(3):
        write_wav(tmp_path / "flat" / f"item{n}_mix.wav", speechlike(0.2))
        for k in (1, 2):
            write_wav(tmp_path / "flat" / f"item{n}_source{k}.wav", speechlike(0.2, seed=k))
    flat_splits = SeparationTask().load_splits(recipe(), source=str(tmp_path / "flat"))
    assert len(flat_splits.train) == 0 and len(flat_splits.test) == 3


def test_unknown_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        SeparationTask().load_splits(recipe(), source=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="neither a LibriMix"):
        SeparationTask().load_splits(recipe(), source=str(tmp_path))


def test_every_shipped_recipe_validates_and_describes_itself():
    names = set(list_recipes("speech"))
    assert names >= {"demo", "small", "paper", "mossformer1", "libri2mix"}
    for name in names:
        loaded = load_recipe(SpeechDomain().recipe_type_for, "speech", name)
        assert loaded.description, name
    assert load_recipe(SeparationRecipe, "speech", "mossformer1").model.name == "mossformer"


def test_recipe_rejects_bad_settings():
    with pytest.raises(UserError, match="num_speakers"):
        recipe(num_speakers=4)
    with pytest.raises(UserError, match="overlap_seconds"):
        recipe(chunk_seconds=1.0, overlap_seconds=0.8)
    with pytest.raises(UserError, match="fsmn_channels"):
        validate_recipe(SeparationRecipe, {"model": {"name": "mossformer", "fsmn_channels": 8}}, source="test")


def test_libri2mix_samples_source_is_the_18_real_mixtures(libri2mix_samples):
    splits = SeparationTask().load_splits(recipe(), source="libri2mix-samples")
    assert len(splits.train) == 0 and len(splits.test) == 18
    assert splits.info["source"] == str(libri2mix_samples)
