"""`predict --audio`: render MIDI to WAV, with a SoundFont when one is available, else with a small
built-in additive synthesiser (so that `--audio` always gives something to listen to, offline).

No SoundFont ships with the packages and nothing is downloaded: set PANFORMER_SOUNDFONT to an .sf2/.sf3
file, or install one where distributions put them (/usr/share/sounds/sf2, /usr/share/soundfonts), and
symusic's synthesiser renders real instrument samples.
"""

from __future__ import annotations

import os
import sys
import wave
from pathlib import Path

import numpy as np

from panformer.engine.files import atomic_path
from panformer.music.midi import read_midi
from panformer.music.representation import RESOLUTION, Note

SOUNDFONT_ENV = "PANFORMER_SOUNDFONT"
SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"), Path("/usr/share/soundfonts"), Path("/usr/share/sounds/sf3"))


def find_soundfont() -> Path | None:
    if env := os.environ.get(SOUNDFONT_ENV):
        return Path(env) if Path(env).is_file() else None
    for folder in SOUNDFONT_DIRS:
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sf2", ".sf3"))
            if found:
                return found[0]
    return None


def synthesize(notes: list[Note], *, qpm: float, sample_rate: int = 22050) -> np.ndarray:
    """Mono float32 audio of `notes`: each pitched note a few harmonics under an attack/decay envelope,
    each drum hit a short noise burst. A sketch of the music, not an instrument model."""
    seconds_per_step = 60.0 / qpm / RESOLUTION
    end = max(((n.beat * RESOLUTION + n.position + n.duration) for n in notes), default=0)
    out = np.zeros(int((end * seconds_per_step + 0.5) * sample_rate) + 1, np.float32)
    rng = np.random.default_rng(0)
    for note in notes:
        start = int((note.beat * RESOLUTION + note.position) * seconds_per_step * sample_rate)
        if note.instrument == "drums":
            length = int(0.08 * sample_rate)
            t = np.arange(length) / sample_rate
            sound = rng.standard_normal(length).astype(np.float32) * np.exp(-t / 0.02) * 0.3
        else:
            length = max(int(note.duration * seconds_per_step * sample_rate), 1)
            t = np.arange(length) / sample_rate
            freq = 440.0 * 2 ** ((note.pitch - 69) / 12)
            sound = sum(np.sin(2 * np.pi * freq * k * t) / k**1.5 for k in (1, 2, 3, 4) if freq * k < sample_rate / 2)
            envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.8) * np.minimum((length - np.arange(length)) / 200, 1)
            sound = (sound * envelope * 0.2).astype(np.float32)
        piece = sound[: len(out) - start]
        out[start : start + len(piece)] += piece
    peak = float(np.abs(out).max())
    return out / peak * 0.9 if peak > 0.9 else out


def render_wav(midi: Path, wav: Path, *, sample_rate: int = 44100) -> Path:
    """Write `wav` from `midi`: symusic with a SoundFont when one is found, else `synthesize`."""
    soundfont = find_soundfont()
    if soundfont is None:
        print(f"--audio: no SoundFont found (set {SOUNDFONT_ENV}=/path/to/font.sf2 for real instruments); "
              "rendered with the built-in additive synthesiser", file=sys.stderr)
        piece = read_midi(midi)
        audio = synthesize(piece.notes, qpm=piece.qpm, sample_rate=sample_rate)
        with atomic_path(wav) as tmp, wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        return wav
    import symusic

    synth = symusic.Synthesizer(sf_path=str(soundfont), sample_rate=sample_rate)
    audio = synth.render(symusic.Score(str(midi)), stereo=True)
    with atomic_path(wav) as tmp:
        symusic.dump_wav(str(tmp), audio, sample_rate=sample_rate, use_int16=True)
    return wav
