"""Pieces every time-series classifier shares: normalisation, patching, masked pooling.

Legend: B batch, C channels, T time steps, N tokens, P patch length, D width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SeriesNormaliser(nn.Module):
    """Per-channel standardisation with statistics fitted on the training split (saved as buffers).

    Missing values (NaN) and padded steps become 0, the training mean.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-6))

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> (B, C, T)."""
        valid = torch.arange(values.shape[-1], device=values.device)[None, :] < lengths[:, None]
        x = (values - self.mean[:, None]) / self.std[:, None]
        return torch.nan_to_num(x, nan=0.0) * valid[:, None, :]


def num_patches(length: int | Tensor, *, patch: int, stride: int) -> int | Tensor:
    """Tokens for a series of `length` steps; a last partial patch (zero-padded) still counts."""
    if isinstance(length, Tensor):
        return ((length - patch).clamp(min=0) + stride - 1) // stride + 1
    return (max(length - patch, 0) + stride - 1) // stride + 1


def patchify(x: Tensor, *, patch: int, stride: int) -> Tensor:
    """x (B, C, T) -> patches (B, N, C, P), zero-padding the end so that no step is dropped."""
    n = num_patches(x.shape[-1], patch=patch, stride=stride)
    needed = (n - 1) * stride + patch
    x = nn.functional.pad(x, (0, needed - x.shape[-1]))
    return x.unfold(-1, patch, stride).transpose(1, 2)


def valid_tokens(lengths: Tensor, n_tokens: int, *, patch: int, stride: int) -> Tensor:
    """Bool (B, N): True for tokens that start inside the series."""
    counts = num_patches(lengths, patch=patch, stride=stride)
    return torch.arange(n_tokens, device=lengths.device)[None, :] < counts[:, None]


def masked_mean(tokens: Tensor, keep: Tensor) -> Tensor:
    """tokens (B, N, D), keep (B, N) -> (B, D)."""
    weights = keep.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


class Ensemble(nn.Module):
    """Independently initialised copies of one classifier, trained side by side on the same batches.

    Each member is trained on its own loss (`member_logits`); the ensemble predicts the log of the
    members' mean probabilities, so its cross-entropy is that of the averaged prediction.
    Legend: M members, B batch, K classes.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> logits (M, B, K)."""
        return torch.stack([member(values, lengths) for member in self.members])

    @staticmethod
    def combine(member_logits: Tensor) -> Tensor:
        """logits (M, B, K) -> the log of the members' mean probability (B, K)."""
        log_probs = torch.log_softmax(member_logits.float(), dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(member_logits.shape[0])

    def forward(self, values: Tensor, lengths: Tensor) -> Tensor:
        """values (B, C, T), lengths (B,) -> log mean probability (B, K)."""
        return self.combine(self.member_logits(values, lengths))
