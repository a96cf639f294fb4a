"""Routing attention (Routing Transformer) against an oracle: the routing rebuilt by loops, as a dense
mask, through the reference softmax. Values and gradients, masks, score mods, GQA, causality, the
centroids' online k-means, the Attention module and KV-cache decoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared_attention import Attention, KVCache, RoPE
from shared_attention.backends.reference import reference_attention
from shared_attention.masks import Causal, Dense, KeyPadding
from shared_attention.variants import Routing, RoutingAttention

from .cases import make_mask, make_score_mod
from .conftest import assert_close, qkv, values_and_grads

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def routing_oracle_mask(q, k, centroids, *, causal, attend_self):
    """bool (B, H, Lq, Lk), one (batch, head, cluster) at a time: nearest centroid for queries; for keys
    the top ceil(Lk / C) of each centroid (causal: the nearest centroid); plus the own position."""
    batch, heads, q_len, _ = q.shape
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    kv_len, clusters = k.shape[2], centroids.shape[1]
    allowed = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            mu = centroids[h]
            q_sim = F.normalize(q[b, h], dim=-1) @ mu.T  # (Lq, C)
            k_sim = F.normalize(k[b, h], dim=-1) @ mu.T  # (Lk, C)
            for c in range(clusters):
                if causal:
                    keys = [j for j in range(kv_len) if int(k_sim[j].argmax()) == c]
                else:
                    keys = k_sim[:, c].argsort(descending=True)[: math.ceil(kv_len / clusters)].tolist()
                for i in range(q_len):
                    if int(q_sim[i].argmax()) == c:
                        allowed[b, h, i, keys] = True
            if attend_self:
                for i in range(q_len):
                    allowed[b, h, i, i + kv_len - q_len] = True
    if causal:
        allowed &= Causal().dense(q_len, kv_len)
    return allowed


def _module(heads, head_dim, **options):
    return Routing(**options).build(num_heads=heads, head_dim=head_dim).eval()


@pytest.mark.parametrize("mask_name", ["none", "key_padding", "sliding_symmetric", "edge_index"])
@pytest.mark.parametrize("mod_name", ["none", "alibi", "softcap"])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_routing_matches_oracle_values_and_grads(mask_name, mod_name, backend):
    if backend == "sdpa" and mod_name == "softcap":
        pytest.skip("SDPA takes no soft cap")
    q, k, v = qkv(2, 4, 2, 11, 11, 8, requires_grad=True)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=11, kv_len=11)
    mod = make_score_mod(mod_name, batch=2, heads=4, q_len=11, kv_len=11)
    module = _module(4, 8, num_clusters=3)
    allowed = routing_oracle_mask(q.detach(), k.detach(), module.centroids, causal=False, attend_self=True)
    expected_mask = Dense(allowed if mask is None else allowed & mask.dense(11, 11))
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask, score_mod=mod, backend=backend), q, k, v)
    want = values_and_grads(lambda q, k, v: reference_attention(q, k, v, mask=expected_mask, score_mod=mod), q, k, v)
    assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w)
    # The routing is sparse: far from every pair.
    assert allowed.float().mean() < 0.7


@pytest.mark.parametrize("attend_self", [True, False])
def test_causal_routing_matches_oracle(attend_self):
    q, k, v = qkv(2, 4, 4, 13, 13, 8, requires_grad=True, seed=3)
    module = _module(4, 8, num_clusters=4, causal=True, attend_self=attend_self)
    allowed = routing_oracle_mask(q.detach(), k.detach(), module.centroids, causal=True, attend_self=attend_self)
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=Causal()), q, k, v)
    want = values_and_grads(lambda q, k, v: reference_attention(q, k, v, mask=Dense(allowed)), q, k, v)
    assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w)


def test_balanced_clusters_and_every_query_has_keys():
    q, k, _ = qkv(2, 2, 2, 20, 20, 8, seed=5)
    module = _module(2, 8, num_clusters=6)
    routing = module.content_mask(q, k)
    # Each cluster takes exactly ceil(20 / 6) = 4 keys, however the keys lie.
    assert (routing.key_members.sum(-1) == 4).all()
    assert routing.dense(20, 20).any(-1).all()


def test_causal_routing_does_not_see_the_future():
    q, k, v = qkv(1, 2, 2, 16, 16, 8, seed=7)
    module = _module(2, 8, num_clusters=3, causal=True)
    out = module(q, k, v, mask=Causal())
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[:, :, 10:] = torch.randn(1, 2, 6, 8)
    changed_v[:, :, 10:] = torch.randn(1, 2, 6, 8)
    assert_close(module(q, changed_k, changed_v, mask=Causal())[:, :, :10], out[:, :, :10])
    assert not torch.allclose(module(q, changed_k, changed_v, mask=Causal())[:, :, 10:], out[:, :, 10:])


def test_balanced_routing_refuses_a_causal_mask():
    q, k, v = qkv(1, 2, 2, 6, 6, 8)
    module = _module(2, 8, num_clusters=2)
    for mask in (Causal(), Causal() & KeyPadding(lengths=torch.tensor([4])), make_mask("document_causal", batch=1, heads=2, q_len=6, kv_len=6)):
        with pytest.raises(ValueError, match="causal=True"):
            module(q, k, v, mask=mask)
    with pytest.raises(ValueError, match="num_clusters"):
        Routing(num_clusters=0).build(num_heads=2, head_dim=8)


def test_centroids_learn_the_clusters_in_training_only():
    torch.manual_seed(0)
    directions = F.normalize(torch.randn(2, 8), dim=-1)  # two true clusters
    module = Routing(num_clusters=2, decay=0.8).build(num_heads=1, head_dim=8)
    assert isinstance(module, RoutingAttention)

    def batch():
        pick = torch.randint(0, 2, (4, 1, 32))
        x = directions[pick] + 0.05 * torch.randn(4, 1, 32, 8)
        return x, x, x

    with torch.no_grad():  # start each centroid off its cluster (away from both, as k-means starts)
        module.centroids.copy_(F.normalize(directions + 0.6 * torch.randn(2, 8), dim=-1)[None])
    start = (module.centroids[0] @ directions.T).diagonal()
    assert (start < 0.95).all(), start
    module.eval()
    before = module.centroids.clone()
    module(*batch())
    assert torch.equal(module.centroids, before)  # eval: no update
    module.train()
    for _ in range(30):
        module(*batch())
    assert_close(module.centroids.norm(dim=-1), torch.ones(1, 2))
    # Each centroid moved onto its cluster's direction.
    closeness = (module.centroids[0] @ directions.T).diagonal()
    assert (closeness > 0.99).all(), closeness
    assert "centroids" in module.state_dict()


def test_routing_in_the_attention_module_trains_and_decodes_with_a_cache():
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=RoPE(), variant=Routing(num_clusters=3, causal=True))
    x = torch.randn(2, 9, 32)
    layer(x, mask=Causal()).square().mean().backward()
    assert layer.q_proj.weight.grad.abs().sum() > 0
    layer.eval()
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 16, 8)
    steps = [layer(x[:, :5], mask=Causal(), cache=cache)]
    for t in range(5, 9):
        steps.append(layer(x[:, t : t + 1], mask=Causal(), cache=cache))
    assert_close(torch.cat(steps, dim=1), full)


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_routing_on_cuda_flex_matches_reference(causal):
    q, k, v = qkv(2, 4, 2, 300, 300, 32, requires_grad=True, device="cuda")
    module = _module(4, 32, num_clusters=4, causal=causal).cuda()
    mask = Causal() if causal else None
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask, backend="flex"), q, k, v)
    want = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask, backend="reference"), q, k, v)
    assert_close(got[0], want[0], atol=1e-4, rtol=1e-3)
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w, atol=1e-4, rtol=1e-3)
