"""PNG plots for the time-series commands (the confusion matrix is the engine's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panformer.engine.plots import pyplot, save_png


def class_counts_png(probabilities: np.ndarray, classes: list[str], path: Path) -> Path:
    """Predicted-class counts, with the mean confidence of each class's predictions."""
    plt = pyplot()
    predicted = probabilities.argmax(1)
    counts = np.bincount(predicted, minlength=len(classes))
    confidence = [probabilities[predicted == k, k].mean() if counts[k] else 0.0 for k in range(len(classes))]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2), 3.5))
    bars = ax.bar(range(len(classes)), counts, color="tab:blue")
    for bar, conf in zip(bars, confidence, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{conf:.2f}", ha="center", va="bottom")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_ylabel("series")
    ax.set_title(f"predicted classes (n={len(predicted)}; labels: mean confidence)")
    fig.tight_layout()
    return save_png(fig, path)
