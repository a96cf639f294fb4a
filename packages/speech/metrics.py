"""Separation metrics: SI-SDR, SDR and their improvements over the mixture, with the best permutation.

Legend: B batch, S speakers (sources), T samples. All functions take float tensors and compute in
float64 so that scores of 20+ dB are not limited by float32 rounding.

- SI-SDR (Le Roux et al. 2019): zero-mean both signals, project the estimate on the reference,
  10 log10(|target|^2 / |estimate - target|^2).
- SDR: BSS-eval's signal-to-distortion ratio for one source, where the reference may pass through a
  512-tap FIR filter before the comparison (as in bss_eval v4 / fast_bss_eval / torchmetrics).
- ...i: the score of the estimate minus the score of the unprocessed mixture against the same reference.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import torch
from torch import Tensor

EPS = 1e-8


def valid_mask(lengths: Tensor | None, num_samples: int, *, device: torch.device) -> Tensor | None:
    """(B,) lengths -> bool (B, 1, T) mask of the real samples of padded signals (None if unpadded)."""
    if lengths is None:
        return None
    return (torch.arange(num_samples, device=device) < lengths.to(device)[:, None])[:, None, :]


def si_sdr(estimate: Tensor, reference: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Scale-invariant SDR in dB; (..., T) x (..., T) -> (...). `mask` (broadcastable, bool) marks
    the samples that count (padding excluded from the means and the energies)."""
    estimate, reference = estimate.double(), reference.double()
    if mask is None:
        mask = torch.ones_like(reference, dtype=torch.bool)
    mask = mask.expand_as(reference).double()
    count = mask.sum(-1, keepdim=True).clamp(min=1)
    estimate = (estimate - (estimate * mask).sum(-1, keepdim=True) / count) * mask
    reference = (reference - (reference * mask).sum(-1, keepdim=True) / count) * mask
    scale = (estimate * reference).sum(-1, keepdim=True) / ((reference**2).sum(-1, keepdim=True) + EPS)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10(((target**2).sum(-1) + EPS) / ((noise**2).sum(-1) + EPS))


def sdr(estimate: Tensor, reference: Tensor, *, filter_length: int = 512) -> Tensor:
    """BSS-eval SDR in dB with a `filter_length`-tap distortion filter on the reference.

    (..., T) x (..., T) -> (...). The filter minimising |estimate - h * reference|^2 is solved from the
    reference's autocorrelation (Toeplitz) and its cross-correlation with the estimate; the filtered
    reference is the "target". With filter_length=1 this is the scale-invariant SDR without mean removal.
    """
    estimate, reference = estimate.double(), reference.double()
    length = reference.shape[-1]
    n_fft = 2 ** math.ceil(math.log2(length + filter_length))
    ref_f = torch.fft.rfft(reference, n_fft)
    est_f = torch.fft.rfft(estimate, n_fft)
    auto = torch.fft.irfft(ref_f.abs() ** 2, n_fft)[..., :filter_length]  # r_ss[k], k >= 0
    cross = torch.fft.irfft(ref_f.conj() * est_f, n_fft)[..., :filter_length]  # r_se[k]
    lags = torch.arange(filter_length, device=reference.device)
    toeplitz = auto[..., (lags[:, None] - lags[None, :]).abs()]
    # A tiny ridge keeps the system solvable for silent or band-limited references.
    ridge = 1e-10 * auto[..., :1, None].clamp(min=EPS) * torch.eye(filter_length, dtype=auto.dtype, device=auto.device)
    taps = torch.linalg.solve(toeplitz + ridge, cross[..., None])[..., 0]
    # |h * s|^2 = h^T R h and <e, h * s> = h^T r_se, so no filtering in the time domain is needed.
    target_energy = (taps * cross).sum(-1)
    noise_energy = ((estimate**2).sum(-1) - target_energy).clamp(min=0)
    return 10 * torch.log10((target_energy.clamp(min=0) + EPS) / (noise_energy + EPS))


@cache
def permutations(num_speakers: int, device: torch.device) -> Tensor:
    """All orderings of S speakers: (S!, S) long, built once per device (a step replayed from a CUDA graph
    cannot copy it from the host)."""
    return torch.tensor(list(itertools.permutations(range(num_speakers))), device=device)


def pairwise_si_sdr(estimates: Tensor, references: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """(B, S, T) x (B, S, T) -> (B, S_est, S_ref) SI-SDR of every estimate against every reference."""
    pair_mask = None if mask is None else mask[:, :, None, :]
    return si_sdr(estimates[:, :, None, :], references[:, None, :, :], mask=pair_mask)


def best_permutation(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise scores (B, S_est, S_ref) -> (perm (B, S), mean score (B,)): estimate perm[b, s] goes
    with reference s, chosen to maximise the mean score over speakers."""
    num_speakers = scores.shape[-1]
    perms = permutations(num_speakers, scores.device)  # (P, S)
    refs = torch.arange(num_speakers, device=scores.device)
    totals = scores[:, perms, refs].mean(-1)  # (B, P)
    best = totals.argmax(-1)
    return perms[best], totals.gather(1, best[:, None])[:, 0]


def reorder(estimates: Tensor, perm: Tensor) -> Tensor:
    """Estimates (B, S, T) reordered so that row s pairs with reference s; perm (B, S)."""
    return estimates.gather(1, perm[:, :, None].expand_as(estimates))


def separation_scores(
    estimates: Tensor, references: Tensor, mixture: Tensor, *, lengths: Tensor | None = None, with_sdr: bool = True
) -> dict[str, Tensor]:
    """Per-item scores (B,) averaged over speakers, with the permutation that maximises SI-SDR.

    estimates, references (B, S, T); mixture (B, T); lengths (B,) real lengths of padded signals.
    Returns si_sdr, si_sdri and (with_sdr) sdr, sdri.
    """
    mask = valid_mask(lengths, references.shape[-1], device=references.device)
    perm, best = best_permutation(pairwise_si_sdr(estimates, references, mask=mask))
    ordered = reorder(estimates, perm)
    mixtures = mixture[:, None, :].expand_as(references)
    baseline = si_sdr(mixtures, references, mask=mask).mean(-1)
    scores = {"si_sdr": best, "si_sdri": best - baseline}
    if with_sdr:
        per_item = []
        for b in range(references.shape[0]):
            n = references.shape[-1] if lengths is None else int(lengths[b])
            est_sdr = sdr(ordered[b, :, :n], references[b, :, :n]).mean()
            mix_sdr = sdr(mixtures[b, :, :n], references[b, :, :n]).mean()
            per_item.append(torch.stack((est_sdr, est_sdr - mix_sdr)))
        sdr_both = torch.stack(per_item)
        scores |= {"sdr": sdr_both[:, 0], "sdri": sdr_both[:, 1]}
    return scores
