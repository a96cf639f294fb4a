"""Scoring separations that already exist on disk (ours or another system's) against references.

References use the flat layout: <refs>/itemN_mix.wav and itemN_source1..S.wav. Estimates for item N
are found in <estimates> under either naming:
- itemN_source{k}hat.wav (how MossFormer2's published Libri2Mix samples are named), or
- itemN_mix_spk{k}.wav (what `predict` writes for itemN_mix.wav).
Each item is scored with the permutation that maximises SI-SDR; improvements are over the mixture.
PESQ and STOI are added when the `pesq` / `pystoi` packages are installed (they are optional).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

import panformer
from panformer.engine.errors import UserError
from panformer.speech.audio import read_audio
from panformer.speech.data import flat_items
from panformer.speech.metrics import best_permutation, pairwise_si_sdr, reorder, separation_scores

SAMPLES_SOURCE = "libri2mix-samples"


def libri2mix_samples_dir() -> Path:
    """MossFormer2's published Libri2Mix samples (18 mixtures, references and its separations), kept
    beside the repository at ../shared/data/libri2mix-samples. Evaluation only: never train on them."""
    return Path(panformer.__file__).resolve().parents[2] / "shared" / "data" / "libri2mix-samples"


def resolve_samples(source: str) -> str:
    """`libri2mix-samples` -> the folder's path (a UserError if it is not there); other sources unchanged."""
    if source != SAMPLES_SOURCE:
        return source
    folder = libri2mix_samples_dir()
    if not folder.is_dir():
        raise UserError(f"--data {source}: {folder} is not here; give the folder of itemN_mix.wav files instead")
    return str(folder)


def estimate_files(estimates: Path, mixture: Path, num_speakers: int) -> list[Path]:
    item = mixture.stem.removesuffix("_mix")
    for names in (
        [f"{item}_source{k}hat" for k in range(1, num_speakers + 1)],
        [f"{mixture.stem}_spk{k}" for k in range(1, num_speakers + 1)],
    ):
        found = [next(iter(sorted(estimates.glob(f"{n}.*"))), None) for n in names]
        if all(found):
            return found
    raise UserError(
        f"{estimates}: no estimates for {mixture.name}; expected {item}_source1hat.wav ... or "
        f"{mixture.stem}_spk1.wav ... (one per speaker)"
    )


def perceptual_scores(estimates: torch.Tensor, references: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Mean PESQ (narrow-band below 16 kHz) and STOI over speakers of ordered (S, T) signals, for the
    packages that import; {} when neither is installed."""
    scores: dict[str, float] = {}
    pairs = [(e.numpy().astype("float64"), r.numpy().astype("float64")) for e, r in zip(estimates, references, strict=True)]
    try:
        from pesq import pesq
    except ImportError:
        pass
    else:
        mode = "wb" if sample_rate >= 16000 else "nb"
        scores["pesq"] = statistics.fmean(pesq(sample_rate, r, e, mode) for e, r in pairs)
    try:
        from pystoi import stoi
    except ImportError:
        pass
    else:
        scores["stoi"] = statistics.fmean(stoi(r, e, sample_rate) for e, r in pairs)
    return scores


def score_folders(
    estimates: Path, references: Path, *, num_speakers: int = 2, sample_rate: int = 8000, with_sdr: bool = True
) -> dict[str, object]:
    """Per-item and mean SI-SDR, SI-SDRi (and SDR, SDRi) of the estimates in `estimates`."""
    for folder, option in ((estimates, "--estimates"), (references, "--references")):
        if not Path(folder).is_dir():
            raise UserError(f"{option} {folder}: not a folder")
    items = flat_items(Path(references), num_speakers=num_speakers)
    if not items:
        raise UserError(f"--references {references}: no itemN_mix.wav files (flat layout)")
    rows = []
    for item in items:
        refs = [read_audio(p, sample_rate) for p in item.sources]
        ests = [read_audio(p, sample_rate) for p in estimate_files(Path(estimates), item.mixture, num_speakers)]
        mixture = read_audio(item.mixture, sample_rate)
        n = min(mixture.shape[-1], *(r.shape[-1] for r in refs), *(e.shape[-1] for e in ests))
        estimated, referenced = torch.stack([e[:n] for e in ests])[None], torch.stack([r[:n] for r in refs])[None]
        scores = separation_scores(estimated, referenced, mixture[None, :n], with_sdr=with_sdr)
        perm, _ = best_permutation(pairwise_si_sdr(estimated, referenced))
        perceptual = perceptual_scores(reorder(estimated, perm)[0], referenced[0], sample_rate)
        rows.append({"item": item.mixture.stem.removesuffix("_mix"), **{k: float(v[0]) for k, v in scores.items()},
                     **perceptual})
    keys = [k for k in rows[0] if k != "item"]
    return {"items": rows, "mean": {k: statistics.fmean(r[k] for r in rows) for k in keys}, "count": len(rows)}
