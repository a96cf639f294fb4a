"""Audio files in and out: soundfile I/O, downmix to mono and torchaudio resampling to the model's rate.

Every problem with an input file becomes a `UserError` that names the file and the fix. `StreamReader`
reads any stretch of a long file at the model's rate without loading the whole file: each stretch is
read with a margin of context, resampled and trimmed, so the samples equal those of resampling the
whole file at once (up to float rounding).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from panformer.engine.errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Peak below which a file counts as silent: well under one step of 16-bit PCM.
SILENCE_PEAK = 1e-5
# Input samples of context around each stretch: covers torchaudio's windowed-sinc filter.
RESAMPLE_MARGIN = 256


def audio_info(path: Path) -> sf._SoundFileInfo:
    """soundfile's header info, or a UserError saying why the file is not usable audio."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such audio file; give a .wav, .flac or .ogg file or a folder of them")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); give a non-empty .wav, .flac or .ogg file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise UserError(f"{path}: not a readable audio file; give a .wav, .flac or .ogg file") from None
    if info.frames == 0:
        raise UserError(f"{path}: the audio has zero length (no samples); give a file with audio in it")
    return info


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(T,) or (T, C) -> (T,) float32 by averaging the channels."""
    return (samples.mean(axis=1) if samples.ndim == 2 else samples).astype(np.float32, copy=False)


def resample(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """(..., T) at orig_rate -> (..., T') at new_rate (torchaudio's band-limited sinc interpolation)."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(wave, orig_rate, new_rate)


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """A whole file as mono float32 (T,) at its own rate, and that rate."""
    audio_info(path)  # a readable, non-empty file, or a UserError saying what is wrong
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):  # a header that reads but samples that do not
        raise UserError(f"{path}: the audio data cannot be decoded (a damaged file?); replace the file") from None
    return to_mono(samples), int(rate)


def read_audio(path: Path, sample_rate: int) -> Tensor:
    """A whole file as mono float32 (T,) at `sample_rate`."""
    samples, rate = read_mono(path)
    return resample(torch.from_numpy(samples), rate, sample_rate)


def write_audio(path: Path, wave: Tensor, sample_rate: int) -> None:
    """(T,) float -> 16-bit PCM wav (float clipped to [-1, 1])."""
    sf.write(str(path), wave.detach().cpu().float().clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")


class StreamReader:
    """Random access to a long audio file at the model's rate, one stretch in memory at a time.

    Args:
        path: a file soundfile can read.
        sample_rate: the model's rate; the file is downmixed and resampled to it.
    """

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path = Path(path)
        info = audio_info(self.path)
        self.file_rate, self.sample_rate = int(info.samplerate), sample_rate
        g = math.gcd(self.file_rate, sample_rate)
        # A stretch starting at a multiple of `self.out_step` model samples starts exactly on input
        # sample (start / out_step) * in_step, so stretches line up with whole-file resampling.
        self.in_step, self.out_step = self.file_rate // g, sample_rate // g
        self.file_frames = int(info.frames)
        self.num_frames = math.ceil(self.file_frames * sample_rate / self.file_rate)
        self.margin_steps = math.ceil(RESAMPLE_MARGIN / self.in_step)

    def _read_file(self, start: int, stop: int) -> np.ndarray:
        """Input samples [start, stop) as mono, zeros outside the file."""
        lo, hi = max(start, 0), min(stop, self.file_frames)
        out = np.zeros(stop - start, dtype=np.float32)
        if hi > lo:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(lo)
                out[lo - start : hi - start] = to_mono(f.read(hi - lo, dtype="float32", always_2d=True))
        return out

    def read(self, start: int, stop: int) -> Tensor:
        """Model-rate samples [start, stop) as (stop - start,) float32; zeros past the end."""
        if self.file_rate == self.sample_rate:
            return torch.from_numpy(self._read_file(start, stop))
        first = start // self.out_step
        last = -(-stop // self.out_step)
        margin = self.margin_steps
        wave = self._read_file((first - margin) * self.in_step, (last + margin) * self.in_step)
        resampled = resample(torch.from_numpy(wave), self.file_rate, self.sample_rate)
        offset = margin * self.out_step + (start - first * self.out_step)
        piece = resampled[offset : offset + stop - start]
        # Past the end of the file the whole-file resample has no samples: report zeros there.
        if stop > self.num_frames:
            piece = piece.clone()
            piece[max(self.num_frames - start, 0) :] = 0
        return piece

    def peak(self, *, block: int = 1 << 16) -> float:
        """The largest absolute sample of the file (streamed)."""
        peak = 0.0
        for samples in sf.blocks(str(self.path), blocksize=block, dtype="float32", always_2d=True):
            if samples.size:
                peak = max(peak, float(np.abs(samples).max()))
        return peak


def check_not_silent(reader: StreamReader) -> None:
    if reader.peak() < SILENCE_PEAK:
        raise UserError(f"{reader.path}: the audio is silent (all samples are zero); give a recording with speech")


def audio_files(folder: Path) -> list[Path]:
    """The .wav/.flac/.ogg files directly in `folder`, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
