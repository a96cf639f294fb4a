"""Sampling: the grammar keeps samples valid, instruments stay the ones given, the KV cache changes
nothing but the speed, and the per-field loss is what the model minimises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panformer.music.data import collate, header_codes, mmt_windows
from panformer.music.domain import MusicDomain, MusicRecipe, parse_instruments
from panformer.music.generate import (
    FieldSampling,
    bar_window,
    continue_bars,
    filter_logits,
    fit_bars,
    generate,
)
from panformer.music.midi import Piece
from panformer.music.model import CompoundTransformer
from panformer.music.representation import (
    BEAT,
    DURATION,
    EOS,
    FIELDS,
    INSTRUMENT,
    INSTRUMENT_EVENT,
    NOTE,
    PITCH,
    POSITION,
    SON,
    SOS,
    TYPE,
    Note,
    Vocabulary,
    encode_notes,
    instrument_code,
)
from tests.music.helpers import grid_notes

SAMPLING = {name: FieldSampling(temperature=1.0, top_p=0.95) for name in FIELDS}


@pytest.fixture(scope="module")
def model() -> CompoundTransformer:
    torch.manual_seed(0)
    return CompoundTransformer(vocab_sizes=Vocabulary(max_beat=32).sizes, dim=32, depth=2, num_heads=4,
                               dropout=0.0, max_len=160).eval()


def assert_valid_song(codes: np.ndarray, *, instruments: set[int] | None = None) -> None:
    kinds = codes[:, TYPE].tolist()
    assert kinds[0] == SOS
    son = kinds.index(SON)
    declared = codes[1:son, INSTRUMENT].tolist()
    assert kinds[1:son] == [INSTRUMENT_EVENT] * len(declared) and declared == sorted(set(declared))
    body = codes[son + 1:]
    if body[-1, TYPE] == EOS:
        body = body[:-1]
    assert (body[:, TYPE] == NOTE).all() and len(body) > 0
    onsets = (body[:, BEAT] - 1) * 12 + body[:, POSITION] - 1
    assert (np.diff(onsets) >= 0).all(), "time went backwards"
    assert (body[:, 1:] > 0).all(), "a note field is 'none'"
    assert set(body[:, INSTRUMENT].tolist()) <= set(declared)
    if instruments is not None:
        assert set(declared) == instruments


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unconditional_samples_follow_the_grammar(model, seed):
    result = generate(model, header_codes([])[:1], max_events=120, sampling=SAMPLING, seed=seed)
    assert len(result.codes) <= 120
    assert_valid_song(result.codes)


def test_instrument_informed_samples_use_only_those_instruments(model):
    names = parse_instruments("piano, Violin,cello")
    result = generate(model, header_codes(names), max_events=100, sampling=SAMPLING, seed=3,
                      allowed_instruments={instrument_code(n) for n in names})
    assert_valid_song(result.codes, instruments={instrument_code(n) for n in names})


def test_end_beat_stops_the_song(model):
    result = generate(model, header_codes(["piano"]), max_events=150, sampling=SAMPLING, seed=0, end_beat=4)
    notes = result.codes[result.codes[:, TYPE] == NOTE]
    assert (notes[:, BEAT] - 1 < 4).all()


def test_kv_cache_gives_identical_samples(model):
    kwargs = dict(max_events=80, sampling=SAMPLING, seed=5)
    cached = generate(model, header_codes(["violin", "cello"]), **kwargs)
    uncached = generate(model, header_codes(["violin", "cello"]), use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached.codes, uncached.codes)


def test_nucleus_and_top_k_filtering():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    allowed = torch.tensor([True, True, True, False])
    kept = filter_logits(logits, allowed, FieldSampling(top_k=2)).isfinite()
    assert kept.tolist() == [True, True, False, False]
    kept = filter_logits(logits, allowed, FieldSampling(top_p=0.5)).isfinite()
    assert kept.tolist() == [True, False, False, False]


def test_windows_restart_the_header_and_shift_beats():
    piece = Piece("p", grid_notes())
    windows = mmt_windows(piece, max_len=16, max_beat=32, stride=1.0)
    assert len(windows) > 1
    for w in windows:
        assert w[0, TYPE] == SOS and len(w) <= 16
        notes = w[w[:, TYPE] == NOTE]
        assert notes[0, BEAT] == 1  # every window starts at beat 0 (code 1)
    assert windows[-1][-1, TYPE] == EOS and all(w[-1, TYPE] != EOS for w in windows[:-1])
    n_notes = sum(int((w[:, TYPE] == NOTE).sum()) for w in windows)
    assert n_notes == len(set(grid_notes()))  # disjoint windows hold every note once


def test_loss_is_the_sum_of_field_nlls_per_event(model):
    task = MusicDomain().task(MusicRecipe())
    batch = collate([{"codes": torch.from_numpy(w)} for w in
                     mmt_windows(Piece("p", grid_notes()), max_len=40, max_beat=32, stride=1.0)])
    loss, outputs = task.loss(model, batch)
    assert loss.item() == pytest.approx(outputs["field_sums"].sum().item() / outputs["events"].item(), rel=1e-5)
    counts = outputs["field_counts"]
    assert counts[TYPE] == outputs["events"] and counts[BEAT] == outputs["notes"]
    assert counts[INSTRUMENT] > counts[BEAT]  # instrument events score the instrument field too


def test_bar_windows_keep_the_header_and_start_at_a_bar():
    # 6/8: bars of 1.5 beats (18 grid steps), three notes each; bar 1 begins mid-beat (beat 1, position 6).
    notes = [Note(b, p, 60 + b, 6, "violin") for b in range(6) for p in (0, 6)] + [Note(0, 0, 40, 12, "cello")]
    codes = encode_notes(notes)[:-1]
    window = bar_window(codes, first_bar=1, beats_per_bar=1.5)
    assert window.codes[:4, TYPE].tolist() == [SOS, INSTRUMENT_EVENT, INSTRUMENT_EVENT, SON]
    kept, original = window.codes[4:], codes[8:]  # bar 0 holds four notes (the cello's too)
    assert window.shift == 1 and window.bars == 3 and len(kept) == 9
    assert (kept[0, BEAT], kept[0, POSITION]) == (1, 7)  # beat 0, position 6: where bar 1 begins
    np.testing.assert_array_equal(kept[:, BEAT] + 1, original[:, BEAT])
    np.testing.assert_array_equal(kept[:, [POSITION, PITCH, DURATION, INSTRUMENT]],
                                  original[:, [POSITION, PITCH, DURATION, INSTRUMENT]])
    fitted = fit_bars(codes, beats_per_bar=1.5, max_events=4 + 6, max_beat=10)
    assert fitted.first_bar == 2 and fitted.bars == 2 and fitted.shift == 3 and fitted.codes[4, BEAT] == 1
    assert fit_bars(codes, beats_per_bar=1.5, max_events=4 + 6, max_beat=1).bars == 1  # beats limit too
    assert fit_bars(codes, beats_per_bar=1.5, max_events=4 + 2, max_beat=10) is None  # no bar fits


def test_continue_bars_slides_past_the_context_and_the_beat_vocabulary():
    torch.manual_seed(0)
    small = CompoundTransformer(vocab_sizes=Vocabulary(max_beat=16).sizes, dim=32, depth=1, num_heads=4,
                                dropout=0.0, max_len=40).eval()
    prompt = header_codes(["piano", "cello"])
    result = continue_bars(small, prompt, end_beat=48, beats_per_bar=4.0, sampling=SAMPLING, seed=1,
                           max_beat_jump=2)
    assert_valid_song(result.codes)
    assert result.codes[-1, TYPE] == EOS and len(result.codes) > small.max_len
    beats = result.codes[result.codes[:, TYPE] == NOTE, BEAT] - 1
    assert beats.max() > 16 and beats.max() < 48  # past the vocabulary's 16 beats, stopped before beat 48
    again = continue_bars(small, prompt, end_beat=48, beats_per_bar=4.0, sampling=SAMPLING, seed=1, max_beat_jump=2)
    np.testing.assert_array_equal(result.codes, again.codes)
