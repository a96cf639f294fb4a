"""The built-in synthesiser: `--audio` gives a WAV of the right length and pitch without a SoundFont."""

from __future__ import annotations

import wave

import numpy as np

from panformer.music.audio import render_wav, synthesize
from panformer.music.midi import write_midi
from panformer.music.representation import RESOLUTION, Note


def test_a_note_sounds_at_its_pitch_for_its_duration():
    rate = 22050
    notes = [Note(0, 0, 69, 2 * RESOLUTION, "piano")]  # A4 for two beats at 120 qpm: one second
    audio = synthesize(notes, qpm=120, sample_rate=rate)
    assert abs(len(audio) / rate - 1.5) < 0.01  # the note plus half a second of tail room
    spectrum = np.abs(np.fft.rfft(audio[:rate]))
    assert abs(int(np.argmax(spectrum)) - 440) < 2  # one second of samples: bin k is k Hz
    assert np.abs(audio[rate + 100 :]).max() < 1e-6  # silent after the note ends


def test_render_wav_without_a_soundfont(tmp_path, monkeypatch):
    monkeypatch.setenv("PANFORMER_SOUNDFONT", str(tmp_path / "missing.sf2"))
    midi = write_midi([Note(b, 0, 60 + b, RESOLUTION, "violin") for b in range(4)] + [Note(0, 0, 36, 1, "drums")],
                      tmp_path / "song.mid", qpm=120)
    path = render_wav(midi, tmp_path / "song.wav", sample_rate=16000)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert 2.0 <= len(frames) / 16000 <= 2.6 and np.abs(frames).max() > 1000
