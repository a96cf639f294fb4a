"""MMT events: the vocabulary, the instrument and duration maps, and the MIDI -> events -> MIDI round trip."""

from __future__ import annotations

import numpy as np
import pytest

from panformer.engine.errors import UserError
from panformer.music.midi import read_midi, write_midi
from panformer.music.representation import (
    EOS,
    INSTRUMENT_EVENT,
    INSTRUMENTS,
    KNOWN_DURATIONS,
    NOTE,
    SON,
    SOS,
    Note,
    Vocabulary,
    decode_notes,
    duration_code,
    encode_notes,
    instrument_of_program,
    program_of,
)
from tests.music.helpers import grid_notes


def test_vocabulary_follows_the_paper():
    assert len(KNOWN_DURATIONS) == 32 and KNOWN_DURATIONS[11] == 12 and KNOWN_DURATIONS[-1] == 384
    assert len(INSTRUMENTS) == 65  # MMT's 64 classes + drums
    assert Vocabulary(max_beat=256).sizes == (5, 258, 13, 129, 33, 66)
    # Every General-MIDI program maps to a class whose own program maps back to it (or is dropped).
    for program in range(128):
        name = instrument_of_program(program)
        assert name is None or instrument_of_program(program_of(name)) == name
    assert instrument_of_program(40) == "violin" and instrument_of_program(42) == "cello"
    assert instrument_of_program(99) is None and instrument_of_program(0, is_drum=True) == "drums"


def test_durations_snap_to_the_nearest_known_one():
    assert KNOWN_DURATIONS[duration_code(12) - 1] == 12
    assert KNOWN_DURATIONS[duration_code(13) - 1] == 12
    assert KNOWN_DURATIONS[duration_code(14) - 1] == 15
    assert KNOWN_DURATIONS[duration_code(1000) - 1] == 384


def test_encoding_has_the_song_structure():
    codes = encode_notes(grid_notes())
    kinds = codes[:, 0].tolist()
    assert kinds[0] == SOS and kinds[-1] == EOS
    header = kinds[1:kinds.index(SON)]
    assert header == [INSTRUMENT_EVENT] * 3  # violin, cello, drums, each declared once
    assert set(kinds[kinds.index(SON) + 1:-1]) == {NOTE}
    notes = codes[codes[:, 0] == NOTE]
    onsets = notes[:, 1] * 12 + notes[:, 2]
    assert (np.diff(onsets) >= 0).all()
    assert (codes[codes[:, 0] != NOTE][:, 1:5] == 0).all()  # fields a type does not use are "none"


def test_midi_round_trip_keeps_pitch_onset_duration_and_instrument(tmp_path):
    notes = grid_notes()
    path = write_midi(decode_notes(encode_notes(notes)), tmp_path / "song.mid")
    back = read_midi(path)
    assert sorted(back.notes) == sorted(set(notes))
    assert decode_notes(encode_notes(back.notes)) == sorted(set(back.notes), key=lambda n: (
        n.beat, n.position, n.pitch, n.duration, INSTRUMENTS.index(n.instrument)))


def test_off_grid_midi_is_quantised(tmp_path):
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    track.notes.append(symusic.Note(250, 470, 64, 90))  # ~ half a beat late, ~ one beat long
    score.tracks.append(track)
    score.dump_midi(str(tmp_path / "off.mid"))
    (note,) = read_midi(tmp_path / "off.mid").notes
    assert (note.beat, note.position, note.pitch, note.instrument) == (0, 6, 64, "piano")
    assert KNOWN_DURATIONS[duration_code(note.duration) - 1] == 12


def test_bad_midi_is_a_user_error(tmp_path):
    (tmp_path / "bad.mid").write_bytes(b"not a midi file at all")
    with pytest.raises(UserError, match="not a readable MIDI"):
        read_midi(tmp_path / "bad.mid")
    import symusic

    symusic.Score(480).dump_midi(str(tmp_path / "empty.mid"))
    with pytest.raises(UserError, match="no notes"):
        read_midi(tmp_path / "empty.mid")


def test_remi_tokens_round_trip_onsets_pitches_and_instruments():
    from panformer.music.midi import Piece
    from panformer.music.remi import decode_remi, remi_ids, remi_windows

    notes = [n for n in grid_notes() if n.duration <= 12]  # REMI's durations are coarser past one beat
    ids = remi_ids(Piece("p", notes))
    assert len(ids) > 3 * len(encode_notes(notes))  # REMI+ needs several tokens per note
    back = decode_remi(ids)
    assert sorted((n.beat, n.position, n.pitch, n.instrument) for n in back) == sorted(
        {(n.beat, n.position, n.pitch, n.instrument) for n in notes})
    windows = remi_windows(Piece("p", notes), max_len=32, stride=1.0)
    assert all(w.shape[1] == 1 and len(w) <= 32 for w in windows)
    assert sum(len(w) for w in windows) == len(ids)


def test_every_shipped_recipe_validates():
    from panformer.engine.config import list_recipes, load_recipe
    from panformer.music.domain import MusicRecipe

    recipes = list_recipes("music")
    assert {"demo", "mmt", "remi-baseline"} <= set(recipes)
    for name in recipes:
        recipe = load_recipe(MusicRecipe, "music", name)
        assert recipe.data.max_len >= 8
    paper = load_recipe(MusicRecipe, "music", "mmt")
    assert (paper.model.dim, paper.model.depth, paper.model.num_heads, paper.data.max_len) == (512, 6, 8, 1024)


def test_vectorised_encoding_equals_the_note_by_note_definition():
    rng = np.random.default_rng(0)
    steps = [1, 13, 14, 17, 27, 33, 400, 0]  # ties between known durations go to the shorter one
    notes = [Note(int(rng.integers(0, 40)), int(rng.integers(0, 12)), int(rng.integers(30, 90)),
                  steps[i % len(steps)], INSTRUMENTS[int(rng.integers(0, len(INSTRUMENTS)))]) for i in range(300)]
    notes += notes[:20]  # duplicates are one event
    for max_beat in (10, 256):
        rows = sorted({(n.beat, n.position, n.pitch, duration_code(n.duration), INSTRUMENTS.index(n.instrument) + 1)
                       for n in notes if n.beat <= max_beat})
        header = sorted({r[4] for r in rows})
        expected = ([[SOS, 0, 0, 0, 0, 0]] + [[INSTRUMENT_EVENT, 0, 0, 0, 0, c] for c in header]
                    + [[SON, 0, 0, 0, 0, 0]] + [[NOTE, b + 1, p + 1, h + 1, d, c] for b, p, h, d, c in rows]
                    + [[EOS, 0, 0, 0, 0, 0]])
        assert encode_notes(notes, max_beat=max_beat).tolist() == expected
