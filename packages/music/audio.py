"""`predict --audio`: render MIDI to WAV with symusic's synthesiser when a SoundFont is available.

No SoundFont ships with the packages and nothing is downloaded: set PANFORMER_SOUNDFONT to an .sf2/.sf3
file, or install one where distributions put them (/usr/share/sounds/sf2, /usr/share/soundfonts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from panformer.engine.files import atomic_path

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


def render_wav(midi: Path, wav: Path, *, sample_rate: int = 44100) -> Path | None:
    """Write `wav` from `midi`; None (with one line on stderr) when no SoundFont is available."""
    soundfont = find_soundfont()
    if soundfont is None:
        print(f"--audio: no SoundFont found, so no WAV was written; set {SOUNDFONT_ENV}=/path/to/font.sf2 "
              "(the MIDI file is written)", file=sys.stderr)
        return None
    import symusic

    synth = symusic.Synthesizer(sf_path=str(soundfont), sample_rate=sample_rate)
    audio = synth.render(symusic.Score(str(midi)), stereo=True)
    with atomic_path(wav) as tmp:
        symusic.dump_wav(str(tmp), audio, sample_rate=sample_rate, use_int16=True)
    return wav
