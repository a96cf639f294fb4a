"""MIDI in and out (through symusic) and music21 scores in, as grid notes (`representation.Note`).

A `Piece` is the notes of one file quantised to 12 steps per beat, with the tempo and the bar length
needed to write it back and to count bars and seconds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.music.representation import (
    INSTRUMENTS,
    RESOLUTION,
    Note,
    instrument_code,
    instrument_of_program,
    program_of,
)

MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_QPM = 100.0  # MMT writes its samples at 100 quarter notes per minute


@dataclass
class Piece:
    """The notes of one piece on the grid."""

    name: str
    notes: list[Note]
    qpm: float = DEFAULT_QPM
    beats_per_bar: float = 4.0
    dropped_programs: set[int] = field(default_factory=set)

    @property
    def beats(self) -> float:
        """Length in beats: the end of the last note."""
        return max(((n.beat * RESOLUTION + n.position + n.duration) / RESOLUTION for n in self.notes), default=0.0)

    @property
    def seconds(self) -> float:
        return self.beats * 60.0 / self.qpm


class GridNotes(NamedTuple):
    """One MIDI file on the grid as arrays: notes (N, 5) int64 rows (beat, position, pitch, duration in
    grid steps, instrument code), track by track."""

    notes: np.ndarray
    qpm: float
    beats_per_bar: float
    dropped_programs: set[int]


def read_midi_grid(path: Path) -> GridNotes:
    """A MIDI file -> its notes on the grid, without a Python object per note (symusic's arrays).
    Not a MIDI file or no notes: UserError naming the file."""
    import symusic

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .mid file")
    try:
        score = symusic.Score(str(path))
    except Exception as err:  # symusic raises ValueError/RuntimeError with parser messages
        message = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a readable MIDI file ({message}); give a Standard MIDI File (.mid)") from None
    tpq = score.ticks_per_quarter
    parts, dropped = [], set()
    for track in score.tracks:
        instrument = instrument_of_program(track.program, is_drum=track.is_drum)
        if instrument is None:
            if len(track.notes):
                dropped.add(track.program)
            continue
        if not len(track.notes):
            continue
        arrays = track.notes.numpy()
        onset = np.rint(arrays["time"].astype(np.int64) * RESOLUTION / tpq).astype(np.int64)
        steps = np.maximum(1, np.rint(arrays["duration"].astype(np.int64) * RESOLUTION / tpq)).astype(np.int64)
        beat, position = np.divmod(onset, RESOLUTION)
        parts.append(np.column_stack([beat, position, arrays["pitch"], steps,
                                      np.full(len(onset), instrument_code(instrument))]).astype(np.int64))
    if not parts:
        raise UserError(f"{path} holds no notes (of a known instrument); give a MIDI file with notes")
    qpm = float(score.tempos[0].qpm) if len(score.tempos) else DEFAULT_QPM
    beats_per_bar = 4.0
    if len(score.time_signatures):
        ts = score.time_signatures[0]
        beats_per_bar = ts.numerator * 4.0 / ts.denominator
    return GridNotes(np.concatenate(parts), qpm, beats_per_bar, dropped)


def notes_of(rows: np.ndarray) -> list[Note]:
    """(N, 5) grid rows -> Notes."""
    return [Note(b, p, h, d, INSTRUMENTS[c - 1]) for b, p, h, d, c in np.asarray(rows).tolist()]


def read_midi(path: Path) -> Piece:
    """A MIDI file -> a Piece. Not a MIDI file or no notes: UserError naming the file."""
    grid = read_midi_grid(path)
    return Piece(Path(path).stem, notes_of(grid.notes), qpm=grid.qpm, beats_per_bar=grid.beats_per_bar,
                 dropped_programs=grid.dropped_programs)


def _music21_program(part: Any) -> int:
    """The part's General-MIDI program: from its name when music21 knows it (corpus files often carry a
    generic "String Ensemble" for each quartet part), else from its instrument, else piano."""
    from music21 import instrument

    inst = part.getInstrument(returnDefault=False)
    for name in (part.partName, getattr(inst, "instrumentName", None)):
        if name:
            try:
                found = instrument.fromString(str(name))
            except Exception:  # music21 raises InstrumentException for names it does not know
                continue
            if found.midiProgram is not None:
                return int(found.midiProgram)
    if inst is not None and inst.midiProgram is not None:
        return int(inst.midiProgram)
    return 0


def read_music21(score: Any, name: str) -> Piece:
    """A music21 score (e.g. from music21.corpus) -> a Piece; tied notes become one note."""
    from music21 import meter, tempo

    notes = []
    for part in score.parts:
        instrument = instrument_of_program(_music21_program(part))
        if instrument is None:
            continue
        for element in part.stripTies().flatten().notes:
            length = float(element.quarterLength)
            if length <= 0:  # grace notes have no duration on the grid
                continue
            onset = round(float(element.offset) * RESOLUTION)
            beat, position = divmod(onset, RESOLUTION)
            steps = max(1, round(length * RESOLUTION))
            for pitch in element.pitches:
                notes.append(Note(beat, position, int(pitch.midi), steps, instrument))
    marks = score.recurse().getElementsByClass(tempo.MetronomeMark)
    qpm = float(marks[0].getQuarterBPM()) if marks and marks[0].getQuarterBPM() else DEFAULT_QPM
    signatures = score.recurse().getElementsByClass(meter.TimeSignature)
    beats_per_bar = float(signatures[0].barDuration.quarterLength) if signatures else 4.0
    return Piece(name, notes, qpm=qpm, beats_per_bar=beats_per_bar)


def to_score(notes: list[Note], *, qpm: float = DEFAULT_QPM, beats_per_bar: float = 4.0) -> Any:
    """Grid notes -> a symusic Score at 12 ticks per quarter, one track per instrument class."""
    import symusic

    score = symusic.Score(RESOLUTION)
    score.tempos.append(symusic.Tempo(0, float(qpm)))
    numerator = round(beats_per_bar * 2) if beats_per_bar % 1 else int(beats_per_bar)
    score.time_signatures.append(symusic.TimeSignature(0, numerator, 8 if beats_per_bar % 1 else 4))
    by_instrument: dict[str, list[Note]] = defaultdict(list)
    for n in notes:
        by_instrument[n.instrument].append(n)
    for instrument in sorted(by_instrument):
        track = symusic.Track(name=instrument, program=program_of(instrument), is_drum=instrument == "drums")
        for n in sorted(by_instrument[instrument]):
            track.notes.append(symusic.Note(n.beat * RESOLUTION + n.position, n.duration, n.pitch, 80))
        score.tracks.append(track)
    return score


def write_midi(notes: list[Note], path: Path, *, qpm: float = DEFAULT_QPM, beats_per_bar: float = 4.0) -> Path:
    """Write grid notes as a Standard MIDI File, atomically."""
    score = to_score(notes, qpm=qpm, beats_per_bar=beats_per_bar)
    with atomic_path(Path(path)) as tmp:
        score.dump_midi(str(tmp))
    return Path(path)
