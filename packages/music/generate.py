"""Sampling MMT events one at a time: per-field temperature / top-k / nucleus and a grammar.

The grammar keeps every sample a valid song: event types come in order (start-of-song, instruments in
increasing code order, start-of-notes, notes, end-of-song); beats never go backwards; positions move
forward within a beat; pitches, durations and beats are real codes (never "none"); a note's instrument
is one declared in the header (or given by the user). Decoding uses the core's KV cache unless
`use_cache=False` (the same model and seed then give the same events, only slower).

`continue_bars` continues a song for a given number of bars, past the model's context if need be: the
KV cache is not rolled (MMT needs the song header at the front and counts beats from the window's
start), the window slides instead: the header and the latest whole bars are kept (`fit_bars`), their
beats moved back, and the model reads them again into fresh caches.

Legend: P prompt events, W window events, F = 6 fields, V_f vocabulary of field f.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from panformer.music.model import CompoundTransformer
from panformer.music.representation import (
    BEAT,
    DURATION,
    EOS,
    FIELDS,
    INSTRUMENT,
    INSTRUMENT_EVENT,
    INSTRUMENTS,
    NOTE,
    PITCH,
    POSITION,
    RESOLUTION,
    SON,
    SOS,
    TYPE,
)


@dataclass(frozen=True)
class FieldSampling:
    """How one field is sampled: temperature, then top-k, then nucleus (top-p) filtering."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def filter_logits(logits: Tensor, allowed: Tensor, how: FieldSampling) -> Tensor:
    """logits (V,), allowed (V,) bool -> logits with disallowed and filtered-out codes at -inf."""
    logits = logits.float().masked_fill(~allowed, float("-inf")) / max(how.temperature, 1e-6)
    if how.top_k is not None and how.top_k < int(allowed.sum()):
        kth = logits.topk(how.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if how.top_p is not None and how.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best code).
        drop = probs.cumsum(-1) - probs >= how.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_code(logits: Tensor, allowed: Tensor, how: FieldSampling, generator: torch.Generator) -> int:
    filtered = filter_logits(logits, allowed, how)
    if how.temperature <= 0:
        return int(filtered.argmax())
    return int(torch.multinomial(filtered.softmax(-1), 1, generator=generator))


@dataclass
class Grammar:
    """What may come next, from the events so far."""

    sizes: Sequence[int]
    allowed_instruments: set[int] | None = None  # codes the header may declare (None: any)
    max_beat_jump: int = 8  # a note starts at most this many beats after the previous one
    may_end: bool = True  # False: no end-of-song (the caller stops at a beat instead)
    declared: list[int] = field(default_factory=list)
    phase: str = "start"  # start -> header -> notes -> done
    last_beat: int = 1  # codes (beat + 1, position + 1)
    last_position: int = 1
    notes: int = 0

    def advance(self, row: Sequence[int]) -> None:
        kind = int(row[TYPE])
        if kind == SOS:
            self.phase = "header"
        elif kind == INSTRUMENT_EVENT:
            self.declared.append(int(row[INSTRUMENT]))
        elif kind == SON:
            self.phase = "notes"
        elif kind == NOTE:
            self.last_beat, self.last_position = int(row[BEAT]), int(row[POSITION])
            self.notes += 1
        elif kind == EOS:
            self.phase = "done"

    def _mask(self, f: int, codes: Sequence[int] | range) -> Tensor:
        mask = torch.zeros(self.sizes[f], dtype=torch.bool)
        mask[[c for c in codes if c < self.sizes[f]]] = True
        return mask

    def next_instruments(self) -> list[int]:
        last = max(self.declared, default=0)
        pool = self.allowed_instruments or set(range(1, len(INSTRUMENTS) + 1))
        return sorted(c for c in pool if c > last and c < self.sizes[INSTRUMENT])

    def allowed_types(self) -> Tensor:
        if self.phase == "start":
            return self._mask(TYPE, [SOS])
        if self.phase == "header":
            kinds = ([INSTRUMENT_EVENT] if self.next_instruments() else []) + ([SON] if self.declared else [])
            return self._mask(TYPE, kinds)
        return self._mask(TYPE, [NOTE, EOS] if self.notes and self.may_end else [NOTE])

    def allowed(self, f: int, kind: int, beat: int) -> Tensor:
        """Codes of field `f` (not the type) for an event of type `kind` whose beat code is `beat`."""
        if kind == INSTRUMENT_EVENT:
            return self._mask(f, self.next_instruments() if f == INSTRUMENT else [0])
        if kind != NOTE:
            return self._mask(f, [0])
        if f == BEAT:
            return self._mask(f, range(self.last_beat, self.last_beat + self.max_beat_jump + 1))
        if f == POSITION:
            return self._mask(f, range(self.last_position if beat == self.last_beat else 1, RESOLUTION + 1))
        if f == INSTRUMENT:
            return self._mask(f, self.declared)
        return self._mask(f, range(1, self.sizes[f]))  # pitch, duration: any real code


def sample_event(
    logits: Sequence[Tensor], grammar: Grammar, sampling: Mapping[str, FieldSampling], generator: torch.Generator
) -> list[int]:
    """One event from the last position's logits [(V_f,) per field], type first, then the rest."""
    row = [0] * len(FIELDS)
    row[TYPE] = sample_code(logits[TYPE], grammar.allowed_types(), sampling["type"], generator)
    for f in (BEAT, POSITION, PITCH, DURATION, INSTRUMENT):
        row[f] = sample_code(logits[f], grammar.allowed(f, row[TYPE], row[BEAT]), sampling[FIELDS[f]], generator)
    return row


@dataclass
class Generated:
    codes: np.ndarray  # (N, F) prompt + sampled events
    prompt_length: int
    seconds: float  # wall time of the sampling loop

    @property
    def new_codes(self) -> np.ndarray:
        return self.codes[self.prompt_length:]


@torch.no_grad()
def generate(
    model: CompoundTransformer,
    prompt: np.ndarray,
    *,
    max_events: int,
    sampling: Mapping[str, FieldSampling],
    seed: int = 0,
    end_beat: int | None = None,
    allowed_instruments: set[int] | None = None,
    max_beat_jump: int = 8,
    may_end: bool = True,
    use_cache: bool = True,
    device: torch.device | str = "cpu",
) -> Generated:
    """Continue `prompt` (P, 6) until end-of-song, `max_events` events in all, or a note at `end_beat`.

    A note that would start at or after `end_beat` (a beat, not a code) ends the song instead; with
    `may_end=False` the model may not end the song itself (it fills `end_beat` or `max_events`). `allowed_instruments` (codes) limits what the
    header may declare (e.g. to the instruments seen in training).
    """
    model.eval()
    max_events = min(max_events, model.max_len)
    grammar = Grammar(model.vocab_sizes, allowed_instruments=allowed_instruments, max_beat_jump=max_beat_jump,
                      may_end=may_end)
    for row in prompt:
        grammar.advance(row)
    generator = torch.Generator().manual_seed(seed)
    codes = [list(map(int, row)) for row in prompt]
    started = time.perf_counter()
    tokens = torch.as_tensor(np.asarray(prompt), dtype=torch.long, device=device)[None]
    caches = model.new_caches(1, device=torch.device(device)) if use_cache else None
    logits = model(tokens, caches=caches)
    while len(codes) < max_events and grammar.phase != "done":
        row = sample_event([lg[0, -1].cpu() for lg in logits], grammar, sampling, generator)
        if row[TYPE] == NOTE and end_beat is not None and row[BEAT] - 1 >= end_beat:
            row = [EOS, 0, 0, 0, 0, 0]
        codes.append(row)
        grammar.advance(row)
        if grammar.phase == "done" or len(codes) >= max_events:
            break
        if use_cache:
            logits = model(torch.as_tensor([[row]], dtype=torch.long, device=device), caches=caches)
        else:
            logits = model(torch.as_tensor([codes], dtype=torch.long, device=device))
    seconds = time.perf_counter() - started
    return Generated(np.asarray(codes, dtype=np.int64), len(prompt), seconds)


# --- windows of whole bars -----------------------------------------------------------------------


@dataclass(frozen=True)
class BarWindow:
    """The song header and the notes from bar `first_bar` on, their beats moved back by `shift`."""

    codes: np.ndarray  # (W, F): start-of-song, instruments, start-of-notes, notes
    first_bar: int  # counted from the piece's start
    bars: int  # from `first_bar` to the last note's bar, both included
    shift: int  # beats taken off every note's beat (relative to the codes it was cut from)

    @property
    def last_beat(self) -> int:
        """The beat of the last note's onset (0 without notes)."""
        notes = self.codes[self.codes[:, TYPE] == NOTE]
        return int(notes[:, BEAT].max()) - 1 if len(notes) else 0

    def fits(self, *, max_events: int, max_beat: int) -> bool:
        return len(self.codes) <= max_events and self.last_beat <= max_beat


def _header_and_notes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes, dtype=np.int64)
    son = int(np.flatnonzero(codes[:, TYPE] == SON)[0])
    return codes[:son + 1], codes[son + 1:][codes[son + 1:, TYPE] == NOTE]


def note_bars(codes: np.ndarray, *, beats_per_bar: float, origin: int = 0) -> np.ndarray:
    """The bar of each note of `codes` (N, F); `origin`: beats the codes were already moved back by,
    so bars are counted from the piece's start."""
    _, notes = _header_and_notes(codes)
    onsets = (notes[:, BEAT] - 1 + origin) * RESOLUTION + notes[:, POSITION] - 1  # grid steps
    return onsets // round(beats_per_bar * RESOLUTION)


def bar_window(codes: np.ndarray, *, first_bar: int, beats_per_bar: float, origin: int = 0) -> BarWindow:
    """The header of `codes` and its notes from bar `first_bar` on, moved back to start near beat 0
    (by whole beats: a bar of a compound metre may start mid-beat)."""
    header, notes = _header_and_notes(codes)
    bars = note_bars(codes, beats_per_bar=beats_per_bar, origin=origin)
    kept = notes[bars >= first_bar].copy()
    shift = max(int(first_bar * beats_per_bar) - origin, 0)
    kept[:, BEAT] -= shift
    last_bar = int(bars.max()) if len(bars) else first_bar
    return BarWindow(np.concatenate([header, kept]), first_bar, last_bar - first_bar + 1, shift)


def fit_bars(codes: np.ndarray, *, beats_per_bar: float, max_events: int, max_beat: int,
             origin: int = 0) -> BarWindow | None:
    """The window of the most latest whole bars of `codes` that holds at most `max_events` events, its
    notes starting at `max_beat` or before; None when even the last bar does not fit."""
    bars = note_bars(codes, beats_per_bar=beats_per_bar, origin=origin)
    first = int(bars.min()) if len(bars) else 0
    for first_bar in range(first, int(bars.max(initial=first)) + 1):
        window = bar_window(codes, first_bar=first_bar, beats_per_bar=beats_per_bar, origin=origin)
        if window.fits(max_events=max_events, max_beat=max_beat):
            return window
    return None


def continue_bars(
    model: CompoundTransformer,
    prompt: np.ndarray,
    *,
    end_beat: int,
    beats_per_bar: float,
    sampling: Mapping[str, FieldSampling],
    origin: int = 0,
    seed: int = 0,
    allowed_instruments: set[int] | None = None,
    max_beat_jump: int = 8,
    device: torch.device | str = "cpu",
) -> Generated:
    """Continue `prompt` (P, 6: header and notes, no end-of-song) with notes before `end_beat`, past the
    model's context and beat vocabulary if need be.

    When either fills, the window slides (module docstring): it keeps the latest whole bars that fill at
    most half of each, and sampling goes on with the next seed. The song ends early only where the bar
    being written fills half the context alone. `origin`: beats the prompt was moved back by, so that
    windows are cut where the piece's bars begin. Beats of the returned codes count as the prompt's do.
    """
    max_beat = model.vocab_sizes[BEAT] - 2
    beat_limit = max(max_beat + 1 - max_beat_jump, 1)  # a note from here on could not jump freely: slide
    window, shift, rows, seconds = np.asarray(prompt, dtype=np.int64), 0, [], 0.0
    for segment in itertools.count():
        finishes = end_beat - shift <= beat_limit
        result = generate(model, window, max_events=model.max_len, sampling=sampling, seed=seed + segment,
                          end_beat=min(end_beat - shift, beat_limit), allowed_instruments=allowed_instruments,
                          max_beat_jump=max_beat_jump, may_end=False, device=device)
        seconds += result.seconds
        new = result.new_codes.copy()
        new[new[:, TYPE] == NOTE, BEAT] += shift
        ended = len(new) > 0 and new[-1, TYPE] == EOS
        if ended and finishes:
            rows.append(new)
            break
        rows.append(new[:-1] if ended else new)
        seen = result.codes[:-1] if ended else result.codes  # the window and its new notes
        slid = fit_bars(seen, beats_per_bar=beats_per_bar, max_events=model.max_len // 2,
                        max_beat=beat_limit // 2, origin=origin + shift)
        if slid is None:
            rows.append(np.asarray([[EOS, 0, 0, 0, 0, 0]]))
            break
        window, shift = slid.codes, shift + slid.shift
    return Generated(np.concatenate([np.asarray(prompt, dtype=np.int64), *rows]), len(prompt), seconds)
