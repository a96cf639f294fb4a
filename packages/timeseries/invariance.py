"""Which symmetries a labelled set of series has, measured on its training split alone.

Some classification sets carry no meaning in where a series starts or which way it runs: outlines of
leaves or arrowheads traced from an arbitrary point (OSULeaf), appliance power with a cycle caught at
any phase (ACSF1). A classifier should then learn to ignore circular shifts (and reflections), which
a random-kernel method such as MiniRocket gets for free from pooling over the whole series. Other sets
are the opposite: ItalyPowerDemand's 24 steps are the hours of a day.

The test: leave-one-out 1-nearest-neighbour accuracy on the training series under the plain Euclidean
distance, under the distance minimised over circular shifts, and over shifts and reflections. Both
symmetries are adopted together, when shifts with reflections make neighbours agree on the label
clearly more often (by `MARGIN`) than either the plain distance or shifts alone: the signature of
closed outlines traced from any point in either direction. A shift gain alone is not enough: series in time whose phase varies (ACSF1's appliance cycles) gain as much under
1-NN, but there circular shifts cut events apart and the trained classifier lost accuracy with them
(held-out development runs, apps/bench/results/timeseries-cpu.md); its convolutions, relative
positions and pooling already tolerate phase.

Legend: N series, C channels, T steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MARGIN = 0.05  # leave-one-out accuracy a symmetry must add before training adopts it
MAX_SERIES = 400  # pairs grow as N^2: larger sets are tested on a stratified sample of this many


@dataclass(frozen=True)
class Invariances:
    """The symmetries adopted and the leave-one-out 1-NN accuracies they were judged by."""

    circular_shift: bool
    mirror: bool
    plain: float
    shifted: float
    shifted_mirrored: float
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        if self.note:
            return f"symmetries not tested: {self.note}"
        return (
            f"leave-one-out 1-NN on the training split: plain {self.plain:.3f}, over circular shifts "
            f"{self.shifted:.3f}, + reflection {self.shifted_mirrored:.3f}; "
            + ("outlines: training augments with circular shifts and reflections" if self.circular_shift
               else "no symmetry adopted")
        )


def _standardised(values: np.ndarray) -> np.ndarray:
    """(N, C, T) -> each series and channel at zero mean and unit std; NaN -> 0."""
    values = np.nan_to_num(values.astype(np.float64))
    return (values - values.mean(-1, keepdims=True)) / (values.std(-1, keepdims=True) + 1e-8)


def _best_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (N, C, T), y (M, C, T) -> the largest circular cross-correlation of each pair over shifts (N, M)."""
    T = x.shape[-1]
    fy = np.conj(np.fft.rfft(y, axis=-1))
    out = np.empty((x.shape[0], y.shape[0]))
    for i, row in enumerate(np.fft.rfft(x, axis=-1)):  # one row at a time: memory O(M C T)
        out[i] = np.fft.irfft(row[None] * fy, n=T, axis=-1).sum(1).max(-1)
    return out


def _leave_one_out(distances: np.ndarray, labels: np.ndarray) -> float:
    distances = distances.copy()
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


def _sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most `limit` series, every class kept in proportion."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[: max(1, round(limit * np.mean(labels == c)))]
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def detect_invariances(series: list[np.ndarray], labels: np.ndarray, *, seed: int = 0) -> Invariances:
    """series: N arrays (C, T_i) of the training split, labels (N,) -> the symmetries training should teach."""
    if len({s.shape[-1] for s in series}) > 1:
        return Invariances(False, False, 0.0, 0.0, 0.0, note="series of unequal length")
    if len(series) < 3:
        return Invariances(False, False, 0.0, 0.0, 0.0, note="fewer than 3 training series")
    keep = _sample(np.asarray(labels), MAX_SERIES, seed)
    x, y = _standardised(np.stack([series[i] for i in keep])), np.asarray(labels)[keep]
    energy = (x**2).sum((1, 2))
    pair_energy = energy[:, None] + energy[None, :]
    plain = pair_energy - 2 * np.einsum("ict,jct->ij", x, x)
    shifted = pair_energy - 2 * _best_correlation(x, x)
    mirrored = np.minimum(shifted, pair_energy - 2 * _best_correlation(x, x[..., ::-1].copy()))
    scores = [_leave_one_out(d, y) for d in (plain, shifted, mirrored)]
    outline = scores[2] >= max(scores[0], scores[1]) + MARGIN
    return Invariances(outline, outline, *scores)
