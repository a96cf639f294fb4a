"""SI-SDR / SDR against hand-computed values, permutations, and the MossFormer2 Libri2Mix anchor."""

from __future__ import annotations

import math

import pytest
import torch

from panformer.speech.metrics import (
    best_permutation,
    pairwise_si_sdr,
    sdr,
    separation_scores,
    si_sdr,
)
from panformer.speech.scoring import score_folders


def test_si_sdr_hand_computed():
    reference = torch.tensor([1.0, -1.0, 1.0, -1.0])
    estimate = reference + torch.tensor([0.5, 0.5, -0.5, -0.5])
    # Zero-mean already; projection scale 1, target energy 4, noise energy 1.
    assert float(si_sdr(estimate, reference)) == pytest.approx(10 * math.log10(4.0), abs=1e-6)


def test_si_sdr_ignores_scale_and_offset():
    torch.manual_seed(0)
    reference, noise = torch.randn(2, 1000)
    estimate = reference + 0.3 * noise
    base = float(si_sdr(estimate, reference))
    assert float(si_sdr(5 * estimate + 2.0, reference)) == pytest.approx(base, abs=1e-6)
    assert float(si_sdr(reference, reference)) > 80


def test_masked_si_sdr_equals_unpadded():
    torch.manual_seed(1)
    reference, estimate = torch.randn(2, 300)
    padded_ref = torch.nn.functional.pad(reference, (0, 50))
    padded_est = torch.nn.functional.pad(estimate, (0, 50), value=3.0)  # garbage past the end
    mask = torch.arange(350) < 300
    assert float(si_sdr(padded_est, padded_ref, mask=mask)) == pytest.approx(float(si_sdr(estimate, reference)))


def test_sdr_with_one_tap_is_projection_snr_without_mean_removal():
    reference = torch.tensor([2.0, 1.0, 0.0, 1.0])
    estimate = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # scale = <e, s> / |s|^2 = 4 / 6; target energy = 16/36 * 6 = 8/3; noise = 4 - 8/3 = 4/3.
    assert float(sdr(estimate, reference, filter_length=1)) == pytest.approx(10 * math.log10(2.0), abs=1e-6)


def test_sdr_matches_least_squares_oracle():
    torch.manual_seed(2)
    taps = 4
    reference = torch.randn(200, dtype=torch.float64)
    estimate = torch.randn(200, dtype=torch.float64) + torch.roll(reference, 1)
    # Columns: the reference delayed by 0..taps-1 samples (zeros shifted in), full-length convolution.
    length = reference.shape[0] + taps - 1
    columns = torch.stack([torch.nn.functional.pad(reference, (k, taps - 1 - k)) for k in range(taps)], dim=1)
    padded_est = torch.nn.functional.pad(estimate, (0, taps - 1))
    solution = torch.linalg.lstsq(columns, padded_est[:, None]).solution
    target = (columns @ solution)[:, 0]
    expected = 10 * torch.log10(target.pow(2).sum() / (padded_est - target).pow(2).sum())
    assert length == padded_est.shape[0]
    assert float(sdr(estimate, reference, filter_length=taps)) == pytest.approx(float(expected), abs=1e-6)


def test_sdr_forgives_a_short_filter_that_si_sdr_does_not():
    torch.manual_seed(3)
    reference = torch.randn(4000)
    delayed = [torch.nn.functional.pad(reference, (k, 0))[:4000] for k in range(3)]
    filtered = 0.6 * delayed[0] + 0.3 * delayed[1] - 0.2 * delayed[2]  # a causal 3-tap filter
    assert float(sdr(filtered, reference)) > 40
    assert float(si_sdr(filtered, reference)) < 10


def test_best_permutation_three_speakers():
    torch.manual_seed(4)
    references = torch.randn(2, 3, 500)
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])
    estimates = torch.stack([references[b, order[b]] for b in range(2)]) + 0.05 * torch.randn(2, 3, 500)
    perm, _ = best_permutation(pairwise_si_sdr(estimates, references))
    # estimates[b, perm[b, s]] is the estimate of reference s.
    for b in range(2):
        assert [int(order[b, perm[b, s]]) for s in range(3)] == [0, 1, 2]


def test_separation_scores_are_permutation_invariant():
    torch.manual_seed(5)
    references = torch.randn(1, 2, 800)
    mixture = references.sum(1)
    estimates = references + 0.1 * torch.randn(1, 2, 800)
    straight = separation_scores(estimates, references, mixture)
    swapped = separation_scores(estimates.flip(1), references, mixture)
    for key in ("si_sdr", "si_sdri", "sdr", "sdri"):
        assert float(straight[key][0]) == pytest.approx(float(swapped[key][0]), abs=1e-6)
    # The mixture itself improves on nothing.
    assert float(separation_scores(mixture[:, None].expand(1, 2, 800), references, mixture)["si_sdri"][0]) == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_mossformer2_published_separations_score_21_70(libri2mix_samples):
    """The anchor: MossFormer2's own Libri2Mix separations, scored by our metric, give its 21.70 dB."""
    result = score_folders(libri2mix_samples, libri2mix_samples, num_speakers=2, with_sdr=False)
    assert result["count"] == 18
    assert result["mean"]["si_sdri"] == pytest.approx(21.70, abs=0.05)


def test_perceptual_scores_only_with_their_packages():
    from panformer.speech.scoring import perceptual_scores

    torch.manual_seed(6)
    signals = torch.randn(2, 8000) * 0.1
    scores = perceptual_scores(signals, signals, 8000)
    for name, module in (("pesq", "pesq"), ("stoi", "pystoi")):
        try:
            __import__(module)
        except ImportError:
            assert name not in scores
        else:
            assert scores[name] > 0.9 * (4.5 if name == "pesq" else 1.0)


def test_test_metrics_add_stoi_after_the_best_permutation():
    from panformer.speech.domain import SeparationTask
    from tests.speech.signals import speechlike

    sources = torch.stack([torch.as_tensor(speechlike(1.0)), torch.as_tensor(speechlike(1.0, pitch=230, seed=1))])
    sources = sources.float()[None]  # (1, 2, T)
    batch = {"mixture": sources.sum(1), "sources": sources, "lengths": torch.tensor([sources.shape[-1]])}
    task = SeparationTask()
    assert "stoi" not in task.metrics({"sample_rate": 8000}).compute()  # not every epoch: too slow
    swapped_clean = task.test_metrics({"sample_rate": 8000})
    swapped_clean.update(batch, sources.flip(1))
    noisy = task.test_metrics({"sample_rate": 8000})
    noisy.update(batch, sources + 0.5 * sources.flip(1))
    clean_scores, noisy_scores = swapped_clean.compute(), noisy.compute()
    assert clean_scores["stoi"] == pytest.approx(1.0, abs=1e-3)  # a swap of speakers is no error
    assert noisy_scores["stoi"] < 0.95 * clean_scores["stoi"]
