"""PNG plots for speech separation: waveform and spectrogram of the mixture and of each estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panformer.engine.plots import pyplot, save_png


def separation_png(
    mixture: np.ndarray, estimates: list[np.ndarray], sample_rate: int, path: Path, *, title: str = ""
) -> Path:
    """One row per signal (mixture, speaker 1, ...): waveform on the left, log spectrogram on the right."""
    plt = pyplot()
    signals = [("mixture", mixture)] + [(f"speaker {k + 1}", e) for k, e in enumerate(estimates)]
    fig, axes = plt.subplots(len(signals), 2, figsize=(12, 2.2 * len(signals)), squeeze=False)
    for row, (name, wave) in enumerate(signals):
        seconds = np.arange(len(wave)) / sample_rate
        axes[row, 0].plot(seconds, wave, linewidth=0.4, color="tab:blue")
        axes[row, 0].set_ylabel(name)
        axes[row, 0].set_xlim(0, max(seconds[-1] if len(seconds) else 0, 1e-3))
        axes[row, 1].specgram(wave + 1e-9, NFFT=256, Fs=sample_rate, noverlap=192, cmap="magma")
        axes[row, 1].set_ylabel("Hz")
    axes[-1, 0].set_xlabel("seconds")
    axes[-1, 1].set_xlabel("seconds")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
