"""Separating audio of any length: overlapping chunks, overlap-add, one speaker order throughout.

Legend: S speakers, n samples of a chunk, V overlap samples. The file is read chunk by chunk at the
model's rate (`StreamReader`); chunk k covers [k * hop, k * hop + chunk) with hop = chunk - overlap.
Before chunk k is added, its S outputs are reordered to match chunk k-1 on their shared V samples
(the permutation with the best mean SI-SDR against the previous chunk's tail) and each is rescaled to
the previous chunk's loudness there (a separator trained with a scale-invariant loss picks an arbitrary
gain per call); then the two are cross-faded over those V samples with linear ramps. Only one chunk
and one tail live in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from panformer.speech.audio import StreamReader
from panformer.speech.metrics import best_permutation, pairwise_si_sdr

# Below this energy per sample the overlap says nothing about who is who: keep the order.
ALIGN_MIN_POWER = 1e-10
# Gains outside [1/MAX_GAIN, MAX_GAIN] come from an overlap too quiet to judge loudness by.
MAX_GAIN = 100.0


def align_to(previous_tail: Tensor, current: Tensor) -> Tensor:
    """Reorder `current` (S, n) so that its first V samples best match `previous_tail` (S, V)."""
    overlap = current[:, : previous_tail.shape[-1]]
    if previous_tail.pow(2).mean() < ALIGN_MIN_POWER or overlap.pow(2).mean() < ALIGN_MIN_POWER:
        return current
    # best_permutation pairs estimate perm[s] with reference s: here the references are the tail.
    perm, _ = best_permutation(pairwise_si_sdr(overlap[None], previous_tail[None]))
    return current[perm[0]]


def match_loudness(previous_tail: Tensor, current: Tensor) -> Tensor:
    """Scale each speaker of `current` (S, n) so that its first V samples are as loud as `previous_tail`
    (S, V) and of the same sign; a speaker silent in the overlap keeps its gain.

    The gain is the ratio of RMS levels, not the least-squares fit, which shrinks towards 0 wherever the
    two chunks' estimates agree only partly."""
    overlap = current[:, : previous_tail.shape[-1]]
    energy, previous_energy = overlap.pow(2).sum(-1), previous_tail.pow(2).sum(-1)
    sign = torch.where((overlap * previous_tail).sum(-1) < 0, -1.0, 1.0)
    gain = sign * (previous_energy / energy.clamp(min=1e-20)).sqrt()
    quiet = torch.minimum(energy, previous_energy) / overlap.shape[-1] <= ALIGN_MIN_POWER
    judged = ~quiet & (gain.abs() > 1 / MAX_GAIN) & (gain.abs() < MAX_GAIN)
    return current * torch.where(judged, gain, torch.ones_like(gain))[:, None]


@torch.no_grad()
def separate_stream(
    model: nn.Module, reader: StreamReader, *, chunk: int, overlap: int, device: torch.device
) -> Iterator[Tensor]:
    """Yield the separated signal (S, m) piece by piece, in order, covering the whole file."""
    if not 0 <= 2 * overlap <= chunk:
        raise ValueError(f"overlap {overlap} must be in [0, chunk / 2] (chunk {chunk})")
    total, hop = reader.num_frames, chunk - overlap
    fade_in = torch.linspace(0, 1, overlap + 2)[1:-1]  # strictly inside (0, 1): both chunks count
    tail: Tensor | None = None
    start = 0
    while True:
        stop = min(start + chunk, total)
        mixture = reader.read(start, stop).to(device)
        estimates = model(mixture[None])[0].float().cpu()  # (S, n)
        last = stop >= total
        if tail is not None:
            estimates = match_loudness(tail, align_to(tail, estimates))
            shared = min(tail.shape[-1], estimates.shape[-1])
            ramp = fade_in[:shared]
            estimates[:, :shared] = tail[:, :shared] * (1 - ramp) + estimates[:, :shared] * ramp
        if last:
            yield estimates
            return
        yield estimates[:, :hop]
        tail = estimates[:, hop:]
        start += hop
