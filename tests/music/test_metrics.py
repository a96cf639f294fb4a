"""Musical metrics (muspy's definitions) on pieces whose values are known by hand."""

from __future__ import annotations

import math

import pytest

from panformer.music.metrics import (
    groove_consistency,
    musical_metrics,
    pitch_class_entropy,
    scale_consistency,
)
from panformer.music.representation import Note

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def notes_of(pitches, *, instrument="piano"):
    return [Note(i, 0, p, 12, instrument) for i, p in enumerate(pitches)]


def test_pitch_class_entropy():
    assert pitch_class_entropy(notes_of([60] * 5)) == pytest.approx(0.0)
    assert pitch_class_entropy(notes_of(C_MAJOR)) == pytest.approx(math.log2(7))
    assert pitch_class_entropy(notes_of(range(60, 72))) == pytest.approx(math.log2(12))
    assert math.isnan(pitch_class_entropy(notes_of([36, 38], instrument="drums")))  # drums are not pitches


def test_scale_consistency():
    assert scale_consistency(notes_of([*C_MAJOR, 72, 74])) == 1.0
    assert scale_consistency(notes_of([60, 61, 62, 63])) == 0.75  # at most 3 of 4 in any major/minor scale
    assert scale_consistency(notes_of(range(60, 72))) == pytest.approx(7 / 12)


def test_groove_consistency():
    same = [Note(bar * 4 + beat, 0, 60, 12, "piano") for bar in range(4) for beat in (0, 2)]
    assert groove_consistency(same) == 1.0
    # Bar 2 moves one of two onsets: 2 of 48 steps differ against each neighbour.
    moved = [Note(0, 0, 60, 1, "piano"), Note(2, 0, 60, 1, "piano"), Note(4, 0, 60, 1, "piano"),
             Note(7, 0, 60, 1, "piano"), Note(8, 0, 60, 1, "piano"), Note(10, 0, 60, 1, "piano")]
    assert groove_consistency(moved) == pytest.approx(1 - (2 / 48 + 2 / 48) / 2)


def test_musical_metrics_average_over_pieces():
    out = musical_metrics([notes_of(C_MAJOR), notes_of([60] * 7)])
    assert out["pitch_class_entropy"] == pytest.approx(math.log2(7) / 2)
    assert out["scale_consistency"] == 1.0
