"""Datasets: folders of MIDI files, the pre-tokenised cache (skips, invalidation, resuming), windows, and
splits that never share a piece."""

from __future__ import annotations

import numpy as np
import pytest

from panformer.engine.errors import UserError
from panformer.music import data
from panformer.music.data import StoreWindows, load_pieces, mmt_windows, split_pieces
from panformer.music.midi import write_midi
from panformer.music.representation import encode_notes
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


def test_folder_source_is_cached_and_bad_files_are_skipped_or_errors(folder, tmp_path, capsys):
    pieces = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in pieces) == [f"song{i}" for i in range(5)]
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(lines) == 1 and "skipped 1 of 6 files" in lines[0] and "broken.mid" in lines[0]
    (cached,) = (tmp_path / "cache").glob("pieces-*")
    again = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    assert [p.notes for p in again] == [p.notes for p in pieces] and list((tmp_path / "cache").glob("pieces-*")) == [cached]
    with pytest.raises(UserError, match=r"broken\.mid.*skip_bad_files=true"):
        load_pieces(str(folder), cache_dir=tmp_path / "strict", skip_bad_files=False)


def test_cache_is_memory_mapped_reused_and_invalidated_when_a_file_changes(folder, tmp_path, monkeypatch):
    store = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    assert isinstance(store.events, np.memmap) and isinstance(store.notes, np.memmap)
    for i in range(len(store)):  # the pre-tokenised events are the pieces' MMT encodings
        assert np.array_equal(store.codes(i), encode_notes(store[i].notes, max_beat=10**9))

    def no_parsing(path):
        raise AssertionError(f"parsed {path} again")

    monkeypatch.setattr(data, "read_midi_grid", no_parsing)
    assert load_pieces(str(folder), cache_dir=tmp_path / "cache").names == store.names  # a second train: no parsing
    monkeypatch.undo()
    song = folder / "song0.mid"
    notes = [n._replace(pitch=n.pitch + 1) for n in store[store.names.index("song0")].notes]
    write_midi(notes, song)  # same size, new content
    changed = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    assert changed[changed.names.index("song0")].notes == notes
    assert len(list((tmp_path / "cache").glob("pieces-*"))) == 2


def test_an_interrupted_first_read_resumes_where_it_stopped(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHECKPOINT_FILES", 2)
    real, calls = data.read_midi_grid, []

    def interrupted(path):
        calls.append(path.name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(data, "read_midi_grid", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_pieces(str(folder), cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data, "read_midi_grid", lambda path: calls.append(path.name) or real(path))
    store = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    # Files 1-4 were committed before the interruption; only the fifth (again) and the sixth are read now.
    assert len(calls) == 5 + 2 and calls[5] == calls[4]
    fresh = load_pieces(str(folder), cache_dir=tmp_path / "fresh")
    assert store.names == fresh.names and np.array_equal(store.events, fresh.events)


def test_store_windows_equal_the_pieces_windows(folder, tmp_path):
    store = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    windows = StoreWindows(store, range(len(store)), max_len=24, max_beat=4, stride=0.5)
    expected = [w for piece in store for w in mmt_windows(piece, max_len=24, max_beat=4, stride=0.5)]
    assert len(windows) == len(expected) > len(store)
    assert all(np.array_equal(windows[i]["codes"].numpy(), w) for i, w in enumerate(expected))


def test_splits_hold_whole_pieces(folder, tmp_path):
    store = load_pieces(str(folder), cache_dir=tmp_path / "cache")
    groups = split_pieces(store.names, val_fraction=0.2, test_fraction=0.2, seed=0)
    names = {split: {store.names[i] for i in group} for split, group in groups.items()}
    assert len(names["test"]) == 1 and len(names["val"]) == 1 and len(names["train"]) == 3
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])
    reversed_names = list(reversed(store.names))
    again = split_pieces(reversed_names, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert names == {split: {reversed_names[i] for i in group} for split, group in again.items()}


def test_missing_or_empty_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pieces(str(tmp_path / "nope"), cache_dir=tmp_path)
    with pytest.raises(UserError, match=r"no \.mid"):
        load_pieces(str(tmp_path), cache_dir=tmp_path)
    with pytest.raises(UserError, match="no pieces by"):
        load_pieces("music21:nobody", cache_dir=tmp_path)
