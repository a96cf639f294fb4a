"""Datasets: folders of MIDI files, the cache, and splits that never share a piece."""

from __future__ import annotations

import pytest

from panformer.engine.errors import UserError
from panformer.music.data import load_pieces, split_pieces
from panformer.music.midi import write_midi
from tests.music.helpers import grid_notes


@pytest.fixture()
def folder(tmp_path):
    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    for i in range(5):
        notes = [n._replace(pitch=n.pitch + i) for n in grid_notes() if n.instrument != "drums"]
        write_midi(notes, songs / ("sub" if i % 2 else ".") / f"song{i}.mid")
    (songs / "broken.mid").write_bytes(b"MThd\x00")
    return songs


def test_folder_source_is_cached_and_bad_files_are_errors_or_skipped(folder, tmp_path):
    with pytest.raises(UserError, match=r"broken\.mid"):
        load_pieces(str(folder), cache_dir=tmp_path / "cache")
    pieces = load_pieces(str(folder), cache_dir=tmp_path / "cache", skip_bad_files=True)
    assert sorted(p.name for p in pieces) == [f"song{i}" for i in range(5)]
    (cached,) = (tmp_path / "cache").glob("*.npz")
    again = load_pieces(str(folder), cache_dir=tmp_path / "cache", skip_bad_files=True)
    assert [p.notes for p in again] == [p.notes for p in pieces] and list((tmp_path / "cache").glob("*.npz")) == [cached]


def test_splits_hold_whole_pieces(folder, tmp_path):
    pieces = load_pieces(str(folder), cache_dir=tmp_path / "cache", skip_bad_files=True)
    groups = split_pieces(pieces, val_fraction=0.2, test_fraction=0.2, seed=0)
    names = {split: {p.name for p in group} for split, group in groups.items()}
    assert len(names["test"]) == 1 and len(names["val"]) == 1 and len(names["train"]) == 3
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])
    assert groups == split_pieces(list(reversed(pieces)), val_fraction=0.2, test_fraction=0.2, seed=0)


def test_missing_or_empty_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pieces(str(tmp_path / "nope"), cache_dir=tmp_path)
    with pytest.raises(UserError, match=r"no \.mid"):
        load_pieces(str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(UserError, match="no pieces by"):
        load_pieces("music21:nobody", cache_dir=tmp_path)
