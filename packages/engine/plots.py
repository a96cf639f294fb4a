"""PNG plots several domains share (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from panformer.engine.domain import Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a one-line error saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def save_png(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
    return path


def confusion_matrix_png(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """Rows are true classes, columns predicted; cells show counts, colour shows the row-normalised rate."""
    plt = pyplot()
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(40.0, max(4.0, 0.5 * len(classes) + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.3f}, n={int(confusion.sum())})")
    if len(classes) <= 30:  # numbers become unreadable beyond that
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center",
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    return save_png(fig, path)


def confusion_matrix_of(
    task: Task, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path, batch_size: int,
    device: torch.device,
) -> Path:
    """`evaluate --plot` for classification tasks: the confusion matrix of `model` over `dataset`."""
    from panformer.engine.metrics import ClassificationMetrics
    from panformer.engine.trainer import evaluate_model

    metrics = ClassificationMetrics(len(info["classes"]))
    evaluate_model(task, model, dataset, info, batch_size=batch_size, device=device, metrics=metrics)
    return confusion_matrix_png(metrics.confusion.numpy(), info["classes"], path)
