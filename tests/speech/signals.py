"""Small test signals and wav files for the speech tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype="FLOAT")
    return path


def speechlike(seconds: float, *, rate: int = 8000, pitch: float = 150.0, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of `pitch` with a slow amplitude envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t) ** 2
    return (0.1 * wave * envelope + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)
