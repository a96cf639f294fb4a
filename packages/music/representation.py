"""The Multitrack Music Transformer (MMT) representation: one compound event per note.

Each event is a row of six codes, (type, beat, position, pitch, duration, instrument), following
Dong et al., "Multitrack Music Transformer" (ICASSP 2023):

- type: start-of-song, instrument, start-of-notes, note, end-of-song;
- beat: the note's beat (quarter note) index, 0 .. max_beat (code = beat + 1, 0 = none);
- position: the onset within the beat on a grid of 12 per beat (code = position + 1, 0 = none);
- pitch: MIDI pitch 0..127 (code = pitch + 1, 0 = none);
- duration: one of MMT's 32 known durations, counted in grid steps (code = index + 1, 0 = none);
- instrument: one of MMT's 64 instrument classes of the General-MIDI programs (code 1..64), or
  drums (code 65: MMT drops drum tracks; we keep them as one more class), 0 = none.

A song is: start-of-song, one instrument event per instrument (sorted), start-of-notes, the notes
sorted by (beat, position, pitch, duration, instrument), end-of-song. Fields a type does not use are 0.

Notes outside this module are plain `Note` tuples on the grid; `codes` arrays are (N, 6) int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

RESOLUTION = 12  # grid steps per beat (quarter note)
FIELDS = ("type", "beat", "position", "pitch", "duration", "instrument")
TYPE, BEAT, POSITION, PITCH, DURATION, INSTRUMENT = range(6)

EVENT_TYPES = ("start-of-song", "instrument", "start-of-notes", "note", "end-of-song")
SOS, INSTRUMENT_EVENT, SON, NOTE, EOS = range(5)

# MMT's 32 durations, in grid steps of 1/12 beat: 1/12 beat .. 32 beats.
KNOWN_DURATIONS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 18, 20,
    21, 24, 30, 36, 40, 42, 48, 60, 72, 84, 96, 120, 144, 168, 192, 384,
)

# MMT's 64 instrument classes, each with the General-MIDI program used when writing MIDI.
INSTRUMENT_PROGRAMS: dict[str, int] = {
    "piano": 0, "electric-piano": 4, "harpsichord": 6, "clavinet": 7,
    "celesta": 8, "glockenspiel": 9, "music-box": 10, "vibraphone": 11, "marimba": 12, "xylophone": 13,
    "tubular-bells": 14, "dulcimer": 15,
    "organ": 16, "church-organ": 19, "accordion": 21, "harmonica": 22, "bandoneon": 23,
    "nylon-string-guitar": 24, "steel-string-guitar": 25, "electric-guitar": 26,
    "bass": 32, "electric-bass": 33, "slap-bass": 36, "synth-bass": 38,
    "violin": 40, "viola": 41, "cello": 42, "contrabass": 43, "harp": 46, "timpani": 47,
    "strings": 49, "synth-strings": 50, "voices": 52, "orchestra-hit": 55,
    "trumpet": 56, "trombone": 57, "tuba": 58, "horn": 60, "brasses": 61, "synth-brasses": 62,
    "soprano-saxophone": 64, "alto-saxophone": 65, "tenor-saxophone": 66, "baritone-saxophone": 67,
    "oboe": 68, "english-horn": 69, "bassoon": 70, "clarinet": 71,
    "piccolo": 72, "flute": 73, "recorder": 74, "pan-flute": 75, "ocarina": 79,
    "lead": 80, "pad": 88,
    "sitar": 104, "banjo": 105, "shamisen": 106, "koto": 107, "kalimba": 108, "bag-pipe": 109, "shehnai": 111,
    "melodic-tom": 117, "synth-drums": 118,
}
DRUMS = "drums"
INSTRUMENTS: tuple[str, ...] = (*INSTRUMENT_PROGRAMS, DRUMS)  # code = index + 1

# General-MIDI program -> instrument class (None: sound effects and the like, which MMT drops).
_PROGRAM_CLASSES: tuple[str | None, ...] = (
    *["piano"] * 4, "electric-piano", "electric-piano", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music-box", "vibraphone", "marimba", "xylophone", "tubular-bells", "dulcimer",
    "organ", "organ", "organ", "church-organ", "organ", "accordion", "harmonica", "bandoneon",
    "nylon-string-guitar", "steel-string-guitar", *["electric-guitar"] * 6,
    "bass", "electric-bass", "electric-bass", "electric-bass", "slap-bass", "slap-bass", "synth-bass", "synth-bass",
    "violin", "viola", "cello", "contrabass", "strings", "strings", "harp", "timpani",
    "strings", "strings", "synth-strings", "synth-strings", "voices", "voices", "voices", "orchestra-hit",
    "trumpet", "trombone", "tuba", "trumpet", "horn", "brasses", "synth-brasses", "synth-brasses",
    "soprano-saxophone", "alto-saxophone", "tenor-saxophone", "baritone-saxophone",
    "oboe", "english-horn", "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan-flute", None, None, None, "ocarina",
    *["lead"] * 8, *["pad"] * 8, *[None] * 8,
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bag-pipe", "violin", "shehnai",
    None, None, None, None, None, "melodic-tom", "synth-drums", "synth-drums",
    *[None] * 8,
)
assert len(_PROGRAM_CLASSES) == 128 and len(INSTRUMENT_PROGRAMS) == 64 and len(KNOWN_DURATIONS) == 32


class Note(NamedTuple):
    """One note on the grid: onset = beat * RESOLUTION + position; duration in grid steps."""

    beat: int
    position: int
    pitch: int
    duration: int
    instrument: str


@dataclass(frozen=True)
class Vocabulary:
    """Sizes of the six fields (code 0 of every field means "not used by this event type")."""

    max_beat: int = 256

    @property
    def sizes(self) -> tuple[int, ...]:
        return (len(EVENT_TYPES), self.max_beat + 2, RESOLUTION + 1, 129, len(KNOWN_DURATIONS) + 1,
                len(INSTRUMENTS) + 1)


def instrument_of_program(program: int, *, is_drum: bool = False) -> str | None:
    """The instrument class of a General-MIDI program (0..127); None for programs MMT drops."""
    if is_drum:
        return DRUMS
    return _PROGRAM_CLASSES[program] if 0 <= program < 128 else None


def program_of(instrument: str) -> int:
    """The General-MIDI program written for an instrument class (drums: 0 on the drum channel)."""
    return 0 if instrument == DRUMS else INSTRUMENT_PROGRAMS[instrument]


def instrument_code(name: str) -> int:
    return INSTRUMENTS.index(name) + 1


def duration_code(steps: int) -> int:
    """The code of the known duration nearest to `steps` (ties to the shorter one, as MMT)."""
    steps = min(max(int(steps), 0), KNOWN_DURATIONS[-1])
    return int(np.argmin(np.abs(np.asarray(KNOWN_DURATIONS) - steps))) + 1


def notes_array(notes: Iterable[Note]) -> np.ndarray:
    """Notes -> (N, 5) int64 rows (beat, position, pitch, duration steps, instrument code)."""
    rows = [(n.beat, n.position, n.pitch, n.duration, instrument_code(n.instrument)) for n in notes]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


_DURATIONS = np.asarray(KNOWN_DURATIONS)


def duration_codes(steps: np.ndarray) -> np.ndarray:
    """`duration_code` of every element: the nearest known duration, ties to the shorter one."""
    steps = np.clip(np.asarray(steps, dtype=np.int64), 0, KNOWN_DURATIONS[-1])
    above = np.clip(np.searchsorted(_DURATIONS, steps), 1, len(_DURATIONS) - 1)
    shorter = steps - _DURATIONS[above - 1] <= _DURATIONS[above] - steps
    return np.where(shorter, above - 1, above) + 1


def encode_array(rows: np.ndarray, *, max_beat: int = 256) -> np.ndarray:
    """Note rows (N, 5) from `notes_array` -> codes (M, 6), the song `encode_notes` describes.

    Vectorised (no Python loop over notes), so that large MIDI collections encode at file speed.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    rows = rows[rows[:, 0] <= max_beat]
    keyed = np.column_stack([rows[:, :3], duration_codes(rows[:, 3]), rows[:, 4]])
    unique = np.unique(keyed, axis=0)  # sorted by (beat, position, pitch, duration, instrument)
    instruments = np.unique(unique[:, 4])
    codes = np.zeros((len(instruments) + len(unique) + 3, 6), dtype=np.int64)
    codes[0, TYPE] = SOS
    codes[1:len(instruments) + 1, TYPE] = INSTRUMENT_EVENT
    codes[1:len(instruments) + 1, INSTRUMENT] = instruments
    codes[len(instruments) + 1, TYPE] = SON
    body = codes[len(instruments) + 2:-1]
    body[:, TYPE] = NOTE
    body[:, BEAT:POSITION + 1] = unique[:, :2] + 1
    body[:, PITCH] = unique[:, 2] + 1
    body[:, DURATION:] = unique[:, 3:]
    codes[-1, TYPE] = EOS
    return codes


def encode_notes(notes: Iterable[Note], *, max_beat: int = 256) -> np.ndarray:
    """Notes -> codes (N, 6): start-of-song, instruments, start-of-notes, notes, end-of-song.

    Notes at beats beyond `max_beat` are dropped (the caller windows long pieces before encoding).
    """
    return encode_array(notes_array(notes), max_beat=max_beat)


def decode_notes(codes: np.ndarray | Sequence[Sequence[int]]) -> list[Note]:
    """Codes (N, 6) -> the notes they hold (stops at end-of-song; rows that are not notes are skipped)."""
    notes = []
    for row in np.asarray(codes, dtype=np.int64):
        if row[TYPE] == EOS:
            break
        if row[TYPE] != NOTE or min(row[BEAT], row[POSITION], row[PITCH], row[DURATION], row[INSTRUMENT]) < 1:
            continue
        notes.append(Note(int(row[BEAT]) - 1, int(row[POSITION]) - 1, int(row[PITCH]) - 1,
                          KNOWN_DURATIONS[int(row[DURATION]) - 1], INSTRUMENTS[int(row[INSTRUMENT]) - 1]))
    return notes


def declared_instruments(codes: np.ndarray) -> list[str]:
    """Instrument classes declared by the instrument events of `codes`."""
    codes = np.asarray(codes)
    return [INSTRUMENTS[int(c) - 1] for c in codes[codes[:, TYPE] == INSTRUMENT_EVENT, INSTRUMENT] if c > 0]


def describe(codes: np.ndarray) -> str:
    """Codes as readable lines (for debugging and docs)."""
    lines = []
    for row in np.asarray(codes):
        kind = EVENT_TYPES[int(row[TYPE])]
        if kind == "instrument":
            lines.append(f"instrument {INSTRUMENTS[int(row[INSTRUMENT]) - 1]}")
        elif kind == "note":
            n = decode_notes([row])[0]
            lines.append(f"note beat={n.beat} position={n.position} pitch={n.pitch} duration={n.duration} "
                         f"instrument={n.instrument}")
        else:
            lines.append(kind)
    return "\n".join(lines)
