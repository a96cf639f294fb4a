"""Scale-invariant SNR with permutation-invariant training (PIT) over all speaker orderings."""

from __future__ import annotations

from torch import Tensor

from panformer.speech.metrics import best_permutation, pairwise_si_sdr, valid_mask


def pit_si_snr_loss(estimates: Tensor, references: Tensor, *, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Negative SI-SNR of the best speaker ordering, averaged over speakers and the batch.

    estimates, references (B, S, T); lengths (B,) real lengths of padded items.
    Returns (loss scalar, perm (B, S)): estimate perm[b, s] is matched to reference s.
    The S! orderings reuse one (B, S, S) matrix of pairwise scores, so 3 speakers cost 9 SI-SNRs, not 18.
    """
    mask = valid_mask(lengths, references.shape[-1], device=references.device)
    scores = pairwise_si_sdr(estimates.float(), references.float(), mask=mask)
    perm, best = best_permutation(scores)
    return -best.float().mean(), perm
