"""Routing attention (Roy, Saffar, Vaswani & Grangier 2021, "Efficient Content-Based Sparse Attention
with Routing Transformers", TACL; arXiv:2003.05997).

Each head keeps C centroids on the unit sphere, learned by online (spherical) k-means: in training,
after each call, every centroid moves towards the mean of the unit-normalised queries and keys
nearest to it, by an exponential moving average (``decay``), and is normalised again. The centroids
are buffers: no gradient, saved with the weights. Attention then runs within clusters:

- each query goes to its nearest centroid;
- ``causal=False``: each centroid takes its top-w keys, w = ceil(Lk / C) (the paper's balanced top-k
  routing: every cluster has exactly w keys, so every query attends w keys). A key may sit in several
  clusters or in none.
- ``causal=True``: each key goes to its nearest centroid (a choice that depends on that key alone),
  and the ``Causal`` mask is added. Top-w over the whole sequence would let future keys decide which
  past keys a query sees, so balancing is off here, and a causal mask with ``causal=False`` is an error.
- ``attend_self``: a query also attends the key at its own position (aligned to the end of the keys,
  as in ``masks.py``), so no query of a self-attention layer is left without keys.

Routing is a mask (``RoutingMask``, one per head), ANDed with the call's mask and run by
``functional.attention``: every backend, mask and score mod applies, and the reference backend is the
oracle. Queries whose keys are all masked output zeros. The assignments are discrete: no gradient
flows through them (as in the paper). What this does not do yet is skip the unrouted pairs: the cost
is that of the dense mask (SDPA or Flex), not the paper's O(L * w).

Legend: B batch, H query heads, Hkv key/value heads, Lq / Lk query / key lengths, D head dim,
C clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from shared_attention.functional import attention
from shared_attention.masks import Mask, with_content_mask
from shared_attention.variants.base import Variant, VariantModule


@dataclass(frozen=True, eq=False)
class RoutingMask(Mask):
    """Query i attends key j when j is a member of i's cluster (or j is i's own position).

    ``query_cluster`` int (B, H, Lq): each query's cluster; ``key_members`` bool (B, H, C, Lk): the
    keys of each cluster. The mask differs per head.
    """

    query_cluster: Tensor
    key_members: Tensor
    attend_self: bool = True
    batch_dependent: bool = field(default=True, init=False)

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        ok = self.key_members[b, h, self.query_cluster[b, h, q_idx], kv_idx]
        if self.attend_self:
            ok = ok | (q_idx + (kv_len - q_len) == kv_idx)
        return ok

    def dense(self, q_len, kv_len, *, device=None):
        if (q_len, kv_len) != (self.query_cluster.shape[-1], self.key_members.shape[-1]):
            raise ValueError(
                f"RoutingMask was built for {self.query_cluster.shape[-1]} queries and "
                f"{self.key_members.shape[-1]} keys, got {q_len} and {kv_len}"
            )
        clusters = self.query_cluster[..., None].expand(-1, -1, -1, kv_len)
        out = self.key_members.gather(2, clusters)  # (B, H, Lq, Lk)
        if self.attend_self:
            q_pos = torch.arange(q_len, device=out.device)[:, None] + (kv_len - q_len)
            out = out | (q_pos == torch.arange(kv_len, device=out.device))
        return out if device is None else out.to(device)

    def batch_size(self):
        return self.query_cluster.shape[0]

    def device(self):
        return self.query_cluster.device


def route(q: Tensor, k: Tensor, centroids: Tensor, *, causal: bool) -> tuple[Tensor, Tensor]:
    """Cluster assignments: q (B, H, Lq, D), k (B, H, Lk, D), centroids (H, C, D) unit rows.

    Returns each query's cluster (B, H, Lq) and the keys of each cluster, bool (B, H, C, Lk).
    """
    num_clusters = centroids.shape[1]
    centroids = centroids.to(q.dtype)
    query_cluster = (F.normalize(q, dim=-1) @ centroids.transpose(-1, -2)).argmax(-1)
    key_affinity = F.normalize(k, dim=-1) @ centroids.transpose(-1, -2)  # (B, H, Lk, C)
    members = torch.zeros(*key_affinity.shape[:2], num_clusters, k.shape[2], dtype=torch.bool, device=k.device)
    if causal:
        nearest = key_affinity.argmax(-1)  # (B, H, Lk)
        members.scatter_(2, nearest[:, :, None, :], True)
    else:
        width = math.ceil(k.shape[2] / num_clusters)
        top = key_affinity.transpose(-1, -2).topk(width, dim=-1).indices  # (B, H, C, w)
        members.scatter_(3, top, True)
    return query_cluster, members


class RoutingAttention(VariantModule):
    """Softmax attention within online k-means clusters; centroids (H, C, D) as a buffer."""

    centroids: Tensor

    def __init__(
        self, *, num_heads: int, head_dim: int, num_clusters: int, causal: bool, decay: float, attend_self: bool
    ) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"Routing(num_clusters={num_clusters}) needs at least one cluster")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Routing(decay={decay}) must be in [0, 1)")
        self.causal, self.decay, self.attend_self = causal, decay, attend_self
        self.register_buffer("centroids", F.normalize(torch.randn(num_heads, num_clusters, head_dim), dim=-1))

    def content_mask(self, q: Tensor, k: Tensor) -> RoutingMask:
        """The routing of q (B, H, Lq, D) over k (B, Hkv, Lk, D) with the current centroids: the mask this
        variant adds to the call's (and to ``Causal`` when causal)."""
        k = k.detach().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        with torch.no_grad():
            query_cluster, members = route(q.detach(), k, self.centroids, causal=self.causal)
        return RoutingMask(query_cluster, members, attend_self=self.attend_self)

    def forward(self, q, k, v, *, mask=None, score_mod=None, scale=None, backend="auto"):
        combined = with_content_mask(self.content_mask(q, k), mask, causal=self.causal, who="Routing")
        out = attention(q, k, v, mask=combined, score_mod=score_mod, scale=scale, backend=backend)
        if self.training:
            self.update_centroids(q, k)
        return out

    @torch.no_grad()
    def update_centroids(self, q: Tensor, k: Tensor) -> None:
        """One online k-means step: each centroid moves towards the mean of its nearest unit-normalised
        queries and keys (EMA with ``decay``), then back onto the unit sphere; empty clusters stay."""
        heads = q.shape[1]
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        points = F.normalize(torch.cat((q, k), dim=2).float(), dim=-1)  # (B, H, Lq + Lk, D)
        nearest = (points @ self.centroids.float().transpose(-1, -2)).argmax(-1)
        one_hot = F.one_hot(nearest, self.centroids.shape[1]).float()  # (B, H, N, C)
        sums = torch.einsum("bhnc,bhnd->hcd", one_hot, points)
        counts = one_hot.sum(dim=(0, 2))[..., None]  # (H, C, 1)
        moved = self.decay * self.centroids.float() + (1 - self.decay) * sums / counts.clamp(min=1)
        self.centroids.copy_(torch.where(counts > 0, F.normalize(moved, dim=-1), self.centroids.float()))

    def extra_repr(self) -> str:
        clusters = self.centroids.shape[1]
        return f"num_clusters={clusters}, causal={self.causal}, decay={self.decay}, attend_self={self.attend_self}"


@dataclass(frozen=True)
class Routing(Variant):
    """Routing attention (Roy et al. 2021, arXiv:2003.05997) with ``num_clusters`` k-means clusters per head.

    ``causal=True`` for decoders (nearest-centroid keys and a causal mask); ``decay`` is the centroids'
    EMA decay; ``attend_self`` lets every query see its own key too (set False for cross attention).
    """

    num_clusters: int = 4
    causal: bool = False
    decay: float = 0.999
    attend_self: bool = True

    def build(self, *, num_heads: int, head_dim: int) -> VariantModule:
        return RoutingAttention(
            num_heads=num_heads, head_dim=head_dim, num_clusters=self.num_clusters, causal=self.causal,
            decay=self.decay, attend_self=self.attend_self,
        )
