"""PNG plots for the time-series commands (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def confusion_matrix_png(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Rows are true classes, columns predicted; cells show counts, colour shows row-normalised rate."""
    plt = _pyplot()
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.3f}, n={int(confusion.sum())})")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def class_counts_png(probabilities: np.ndarray, classes: list[str], path: Path) -> Path:
    """Predicted-class counts, with the mean confidence of each class's predictions."""
    plt = _pyplot()
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
