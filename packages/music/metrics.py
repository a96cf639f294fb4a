"""Metrics: per-field negative log-likelihood on held-out pieces, and musical metrics of notes.

The musical metrics follow muspy's definitions (Dong et al., ISMIR 2020), implemented here:
- pitch-class entropy: Shannon entropy (bits) of the pitch-class histogram (drums left out);
- scale consistency: the largest fraction of notes inside one major or minor scale (drums left out);
- groove consistency: 1 - mean Hamming distance between the onset patterns of consecutive bars,
  divided by the steps per bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from panformer.engine.domain import Metrics
from panformer.music.representation import DRUMS, RESOLUTION, Note

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


class FieldNLL(Metrics):
    """Mean NLL (nats) per field over the events where the field applies, perplexities, and the NLL
    per event (the sum over fields) and per note (comparable across representations); with the
    training split's unigram frequencies, also their NLL per event on the same data (`nll_unigram`)."""

    def __init__(self, fields: Sequence[str], *, unigram_logprobs: Sequence[Sequence[float]] | None = None) -> None:
        self.fields = list(fields)
        self.unigram = [torch.tensor(lp, dtype=torch.float64) for lp in unigram_logprobs] if unigram_logprobs else None
        self.unigram_sum = 0.0
        self.sums = torch.zeros(len(fields), dtype=torch.float64)
        self.counts = torch.zeros(len(fields), dtype=torch.float64)
        self.events = 0
        self.notes = 0

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        self.sums += outputs["field_sums"].detach().double().cpu()
        self.counts += outputs["field_counts"].detach().double().cpu()
        self.events += int(outputs["events"])
        self.notes += int(outputs["notes"])
        if self.unigram is not None:
            targets, applies = outputs["targets"].cpu(), outputs["applies"].cpu()
            for f, logprobs in enumerate(self.unigram):
                self.unigram_sum -= float(logprobs[targets[..., f]][applies[f]].sum())

    def compute(self) -> dict[str, float]:
        per_field = (self.sums / self.counts.clamp(min=1)).tolist()
        out = {"nll": float(self.sums.sum()) / max(self.events, 1),
               "nll_per_note": float(self.sums.sum()) / max(self.notes, 1)}
        if self.unigram is not None:  # the trivial baseline: each field's training frequencies
            out["nll_unigram"] = self.unigram_sum / max(self.events, 1)
        for name, value in zip(self.fields, per_field, strict=True):
            out[f"nll_{name}"] = value
            out[f"ppl_{name}"] = math.exp(min(value, 50.0))
        return out


def _pitched(notes: Sequence[Note]) -> list[Note]:
    return [n for n in notes if n.instrument != DRUMS]


def pitch_class_entropy(notes: Sequence[Note]) -> float:
    pitched = _pitched(notes)
    if not pitched:
        return math.nan
    counts = np.bincount([n.pitch % 12 for n in pitched], minlength=12).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def scale_consistency(notes: Sequence[Note]) -> float:
    pitched = _pitched(notes)
    if not pitched:
        return math.nan
    counts = np.bincount([n.pitch % 12 for n in pitched], minlength=12)
    best = 0
    for root in range(12):
        for scale in (MAJOR, MINOR):
            best = max(best, int(sum(counts[(root + step) % 12] for step in scale)))
    return best / len(pitched)


def groove_consistency(notes: Sequence[Note], *, beats_per_bar: float = 4.0) -> float:
    if not notes:
        return math.nan
    steps = max(1, round(beats_per_bar * RESOLUTION))
    onsets = sorted({n.beat * RESOLUTION + n.position for n in notes})
    bars = onsets[-1] // steps + 1
    if bars < 2:
        return 1.0
    pattern = np.zeros((bars, steps), dtype=bool)
    for t in onsets:
        pattern[t // steps, t % steps] = True
    hamming = (pattern[1:] != pattern[:-1]).sum(1) / steps
    return float(1.0 - hamming.mean())


def musical_metrics(pieces: Sequence[Sequence[Note]], *, beats_per_bar: Sequence[float] | None = None) -> dict[str, float]:
    """Each metric averaged over pieces (pieces without pitched notes are skipped for pitch metrics)."""
    bars = beats_per_bar or [4.0] * len(pieces)
    values: dict[str, list[float]] = {"pitch_class_entropy": [], "scale_consistency": [], "groove_consistency": []}
    for notes, bar in zip(pieces, bars, strict=True):
        values["pitch_class_entropy"].append(pitch_class_entropy(notes))
        values["scale_consistency"].append(scale_consistency(notes))
        values["groove_consistency"].append(groove_consistency(notes, beats_per_bar=bar))
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in values.items()}
