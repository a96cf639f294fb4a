"""Adaptive computation pruning for the Forgetting Transformer, with a proven bound on what it drops.

FoX (Lin, Nikishin, He, Courville 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate",
arXiv:2503.02130) adds the decay bias D_ij = c_i - c_j <= 0 (c the running sum of log forget gates) to
the causal logits. ACP (Lin, Obando-Ceron, He, Courville 2025, "Adaptive Computation Pruning for the
Forgetting Transformer", arXiv:2504.06949) skips the (query block, key block) tiles where that decay is
so strong that their softmax mass is negligible, with a threshold that makes it provably so:

    |q_i . k_j| * s <= U = s * max_i |q_i| * max_j |k_j|     (per batch element and head)
    row i's normaliser >= exp(q_i . k_i s + D_ii) >= exp(-U)  (its own key: D_ii = 0, never pruned)
    a pruned pair's weight <= exp(U + D_ij) / exp(-U)

so pruning every pair with D_ij < delta = log(eps) - 2U - log(Lk) drops at most Lk of them and a softmax
mass of at most ``eps`` per query; the output then moves by at most 2 eps max|v| per channel.

c is non-increasing, so the strongest bias of a tile is c(first query) - c(last key), and each query
block's pruned key blocks are a prefix: ``ForgetGatePruning`` is a mask holding, per batch element,
head and query block (positions // ``block_size``), the first live key. ``Attention(score_mod=
ForgetGate(prune_epsilon=...))`` ands it into the causal mask, so every backend computes the same
thing; Flex (CUDA, or when dispatch picks it) skips the pruned tiles at ``block_size`` 128 (its tile).
The other backends compute them masked out: same result, no time saved.

Legend: B batch, H query heads, Hkv key/value heads, Lq / Lk query / key lengths, D head dim,
N position blocks (ceil(Lk / block_size)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from shared_attention.masks import Causal, Mask, SlidingWindow


@dataclass(frozen=True, eq=False)
class ForgetGatePruning(Mask):
    """Keys before ``live_start[b, h, q_pos // block_size]`` are pruned; ``live_start`` (B, H, N)."""

    live_start: Tensor
    block_size: int
    batch_dependent: bool = field(default=True, init=False)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        block = (q_idx + (kv_len - q_len)) // self.block_size
        return kv_idx >= self.live_start[b, h, block]

    def dense(self, q_len, kv_len, *, device=None):
        # Varies along heads too (Mask.dense evaluates head 0 only): (B, H, Lq, Lk).
        device = torch.device(device) if device is not None else self.device()
        batch, heads = self.live_start.shape[:2]
        b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
        h = torch.arange(heads, device=device).view(1, -1, 1, 1)
        q_idx = torch.arange(q_len, device=device).view(1, 1, -1, 1)
        kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
        return self.allowed(b, h, q_idx, kv_idx, q_len, kv_len).to(device)

    def batch_size(self):
        return self.live_start.shape[0]

    def device(self):
        return self.live_start.device


@torch.no_grad()
def forget_gate_pruning(
    q: Tensor, k: Tensor, cumulative_log_forget: Tensor, *, epsilon: float, block_size: int, scale: float
) -> tuple[ForgetGatePruning, Tensor]:
    """The pruning mask for FoX attention of q (B, H, Lq, D) over k (B, Hkv, Lk, D) with decay
    c = ``cumulative_log_forget`` (B, H, Lk) (queries are the last Lq keys), and the fraction of causal
    (query block, key block) tiles it prunes, a 0-dim tensor. Pruned pairs carry at most ``epsilon``
    of each query's softmax mass (see the module docstring), given logits q k^T * ``scale`` + D and a
    mask that keeps every query's own key."""
    if not 0 < epsilon < 1:
        raise ValueError(f"ForgetGate prune_epsilon={epsilon} must lie in (0, 1)")
    if block_size < 1:
        raise ValueError(f"ForgetGate block_size={block_size} must be positive")
    q_len, kv_len = q.shape[2], k.shape[2]
    heads, kv_heads = q.shape[1], k.shape[1]
    c = cumulative_log_forget.float()
    if c.shape[-1] != kv_len:
        raise ValueError(f"forget-gate decay covers {c.shape[-1]} keys, the call has {kv_len}")
    key_norm = k.float().norm(dim=-1).amax(-1).repeat_interleave(heads // kv_heads, dim=1)  # (B, H)
    bound = scale * q.float().norm(dim=-1).amax(-1) * key_norm  # U
    threshold = math.log(epsilon) - 2 * bound - math.log(kv_len)  # delta, (B, H)

    blocks = -(-kv_len // block_size)
    starts = torch.arange(blocks, device=c.device) * block_size
    last_key = (starts + block_size).clamp(max=kv_len) - 1
    first_query = starts.clamp(min=kv_len - q_len).clamp(max=kv_len - 1)  # first query present in each block
    strongest = c[..., first_query, None] - c[..., None, last_key]  # max D over tile (qb, kb): (B, H, N, N)
    below = torch.arange(blocks, device=c.device)
    pruned = (strongest < threshold[..., None, None]) & (below[None, :] < below[:, None])
    prefix = pruned.to(torch.int32).cumprod(-1).sum(-1)  # pruned key blocks lead each row: (B, H, N)

    present = (starts + block_size > kv_len - q_len).to(torch.float32)  # query blocks holding a query
    causal_tiles = ((below + 1) * present).sum() * c.shape[0] * heads
    skipped = (prefix.float() * present).sum() / causal_tiles
    return ForgetGatePruning(prefix * block_size, block_size), skipped


def check_prunable(mask: Mask | None) -> None:
    """The bound needs each query's own key: refuse masks not known to keep it."""
    if type(mask) is Causal or (type(mask) is SlidingWindow and mask.causal and mask.window >= 1):
        return
    raise ValueError(
        f"ForgetGate pruning needs mask=Causal() or a causal SlidingWindow (its bound uses each query's own "
        f"key); got {mask!r}"
    )


__all__ = ["ForgetGatePruning", "check_prunable", "forget_gate_pruning"]
