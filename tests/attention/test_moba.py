"""Mixture of block attention (MoBA) against an oracle: the block selection rebuilt by loops, as a dense
mask, through the reference softmax. Values and gradients, masks, score mods, GQA, causality, the Flex
block mask read off the selection, the Flex path (CPU inference; CUDA with gradients), KV-cache decoding."""

from __future__ import annotations

import math

import pytest
import torch

from shared_attention import Attention, KVCache, RoPE
from shared_attention.backends.flex import _block_mask_from_dense, flex_available
from shared_attention.backends.reference import reference_attention
from shared_attention.masks import Causal, Dense
from shared_attention.variants import BlockSelection, MoBA, select_blocks
from shared_attention.variants.moba import selection_block_mask

from .cases import make_mask, make_score_mod
from .conftest import assert_close, qkv, values_and_grads

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def moba_oracle_mask(q, k, *, block_size, top_k, causal, query_block=1):
    """bool (B, H, Lq, Lk), query by query: gate = q . mean key of each block; the own block, then the
    best others (past ones only when causal), top_k in all; causal inside the own block. With
    ``query_block``, each run of queries: the mean query's gate, the own blocks of all its queries."""
    batch, heads, q_len, _ = q.shape
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    kv_len = k.shape[2]
    blocks = [range(s, min(s + block_size, kv_len)) for s in range(0, kv_len, block_size)]
    allowed = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            means = torch.stack([k[b, h, list(r)].mean(0) for r in blocks])
            for first in range(0, q_len, query_block):
                run = range(first, min(first + query_block, q_len))
                owns = sorted({(i + kv_len - q_len) // block_size for i in run})
                others = [n for n in range(len(blocks)) if n not in owns and (not causal or n < owns[0])]
                gate = means[others] @ q[b, h, list(run)].mean(0)
                best = [others[j] for j in gate.argsort(descending=True)[: top_k - len(owns)].tolist()]
                for i in run:
                    pos = i + kv_len - q_len
                    for n in [*owns, *best]:
                        for j in blocks[n]:
                            allowed[b, h, i, j] = not causal or j <= pos
    return allowed


def _check(got, want, atol=2e-5, rtol=1e-4):
    assert_close(got[0], want[0], atol=atol, rtol=rtol)
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w, atol=atol, rtol=rtol)


@pytest.mark.parametrize("block_size,top_k", [(4, 2), (5, 3), (16, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_block_selection_matches_oracle(block_size, top_k, causal):
    q, k, _ = qkv(2, 4, 2, 9, 21, 8, seed=1)  # decoding-like: the 9 queries are the last 9 positions
    selection = BlockSelection(select_blocks(q, k, block_size=block_size, top_k=top_k, causal=causal), block_size)
    allowed = selection.dense(9, 21)
    if causal:
        allowed = allowed & Causal().dense(9, 21)
    assert torch.equal(allowed, moba_oracle_mask(q, k, block_size=block_size, top_k=top_k, causal=causal))


@pytest.mark.parametrize("query_block", [2, 4])
def test_query_block_selection_matches_oracle(query_block):
    q, k, _ = qkv(2, 4, 2, 14, 14, 8, seed=8)
    selected = select_blocks(q, k, block_size=5, top_k=3, causal=False, query_block=query_block)
    assert torch.equal(selected[:, :, ::query_block].repeat_interleave(query_block, 2)[:, :, :14], selected)
    want = moba_oracle_mask(q, k, block_size=5, top_k=3, causal=False, query_block=query_block)
    assert torch.equal(BlockSelection(selected, 5).dense(14, 14), want)


@pytest.mark.parametrize("mask_name", ["none", "key_padding", "sliding_symmetric", "edge_index"])
@pytest.mark.parametrize("mod_name", ["none", "alibi", "softcap"])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_moba_matches_oracle_values_and_grads(mask_name, mod_name, backend):
    if backend == "sdpa" and mod_name == "softcap":
        pytest.skip("SDPA takes no soft cap")
    q, k, v = qkv(2, 4, 2, 14, 14, 8, requires_grad=True)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=14, kv_len=14)
    mod = make_score_mod(mod_name, batch=2, heads=4, q_len=14, kv_len=14)
    module = MoBA(block_size=3, top_k=2).build(num_heads=4, head_dim=8)
    allowed = moba_oracle_mask(q.detach(), k.detach(), block_size=3, top_k=2, causal=False)
    assert allowed.float().mean() < 0.5
    oracle_mask = Dense(allowed if mask is None else allowed & mask.dense(14, 14))
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask, score_mod=mod, backend=backend), q, k, v)
    want = values_and_grads(lambda q, k, v: reference_attention(q, k, v, mask=oracle_mask, score_mod=mod), q, k, v)
    _check(got, want)


def test_causal_moba_matches_oracle_and_hides_the_future():
    q, k, v = qkv(1, 2, 1, 17, 17, 8, requires_grad=True, seed=4)
    module = MoBA(block_size=4, top_k=2, causal=True).build(num_heads=2, head_dim=8)
    allowed = moba_oracle_mask(q.detach(), k.detach(), block_size=4, top_k=2, causal=True)
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=Causal()), q, k, v)
    want = values_and_grads(lambda q, k, v: reference_attention(q, k, v, mask=Dense(allowed)), q, k, v)
    _check(got, want)
    with torch.no_grad():
        changed_k, changed_v = k.clone(), v.clone()
        changed_k[:, :, 12:] += 3 * torch.randn(1, 1, 5, 8)
        changed_v[:, :, 12:] += 1
        assert_close(module(q, changed_k, changed_v)[:, :, :12], got[0][:, :, :12])


def test_non_causal_moba_refuses_a_causal_mask_and_bad_options():
    q, k, v = qkv(1, 2, 2, 6, 6, 8)
    with pytest.raises(ValueError, match="causal=True"):
        MoBA(block_size=2).build(num_heads=2, head_dim=8)(q, k, v, mask=Causal())
    with pytest.raises(ValueError, match="top_k"):
        MoBA(block_size=2, top_k=0).build(num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="query_block=1"):
        MoBA(block_size=2, causal=True, query_block=4).build(num_heads=2, head_dim=8)
    q, k, v = qkv(1, 2, 2, 6, 6, 16, requires_grad=True)
    with pytest.raises(ValueError, match="no backward on CPU"):
        MoBA(block_size=2).build(num_heads=2, head_dim=16)(q, k, v, backend="flex")


@pytest.mark.parametrize("block_size", [32, 100, 128, 300])
@pytest.mark.parametrize("causal,query_block", [(False, 1), (True, 1), (False, 128)])
@pytest.mark.parametrize("q_len", [200, 333])
def test_selection_block_mask_covers_exactly_the_selected_tiles(block_size, causal, query_block, q_len):
    if flex_available() is not None:
        pytest.skip(flex_available())
    q, k, _ = qkv(1, 2, 2, q_len, 333, 4, seed=2)
    selected = select_blocks(q, k, block_size=block_size, top_k=2, causal=causal, query_block=query_block)
    selection = BlockSelection(selected, block_size)
    mask = selection & Causal() if causal else selection
    allowed = mask.dense(q_len, 333)
    got = selection_block_mask(selection, mask.mask_mod(q_len, 333), q_len, 333, full_tiles=True, causal=causal)
    # The tiles read off the dense mask pair by pair are the same tiles, full and partial alike.
    want = _block_mask_from_dense(allowed, mask.mask_mod(q_len, 333), q_len, 333)
    for ours, theirs in ((got.kv_num_blocks, want.kv_num_blocks), (got.full_kv_num_blocks, want.full_kv_num_blocks)):
        assert torch.equal(ours, theirs)
    assert torch.equal(got.to_dense(), want.to_dense())
    # Without full tiles (another mask ANDed in), the same tiles, all partial.
    loose = selection_block_mask(selection, mask.mask_mod(q_len, 333), q_len, 333, full_tiles=False, causal=causal)
    assert int(loose.full_kv_num_blocks.sum()) == 0
    assert torch.equal(loose.to_dense(), want.to_dense())


@pytest.mark.slow
def test_moba_flex_path_matches_reference_on_cpu_inference():
    if flex_available() is not None:
        pytest.skip(flex_available())
    q, k, v = qkv(1, 4, 2, 300, 300, 16, seed=6)
    padding = make_mask("key_padding", batch=1, heads=4, q_len=300, kv_len=300)
    alibi = make_score_mod("alibi", batch=1, heads=4, q_len=300, kv_len=300)
    # Non-causal alone (full tiles skip mask_mod); causal with padding and ALiBi (every tile partial).
    for causal, mask, score_mod in ((False, None, None), (True, Causal() & padding, alibi)):
        module = MoBA(block_size=64, top_k=2, causal=causal).build(num_heads=4, head_dim=16)
        got = module(q, k, v, mask=mask, score_mod=score_mod, backend="flex")
        want = module(q, k, v, mask=mask, score_mod=score_mod, backend="reference")
        assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_moba_in_the_attention_module_trains_and_decodes_with_a_cache():
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=RoPE(), variant=MoBA(block_size=3, top_k=2, causal=True))
    x = torch.randn(2, 13, 32)
    layer(x, mask=Causal()).square().mean().backward()
    assert layer.q_proj.weight.grad.abs().sum() > 0
    layer.eval()
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 16, 8)
    steps = [layer(x[:, :5], mask=Causal(), cache=cache)]
    for t in range(5, 13):
        steps.append(layer(x[:, t : t + 1], mask=Causal(), cache=cache))
    assert_close(torch.cat(steps, dim=1), full)


@gpu
@pytest.mark.parametrize("causal,query_block", [(False, 1), (True, 1), (False, 128)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_moba_flex_path_on_cuda_matches_reference(causal, query_block, with_mask):
    length = 1000
    q, k, v = qkv(2, 4, 2, length, length, 64, requires_grad=True, device="cuda")
    module = MoBA(block_size=128, top_k=3, causal=causal, query_block=query_block).build(num_heads=4, head_dim=64)
    mask = Causal() if causal else None
    if with_mask:
        padding = make_mask("key_padding", batch=2, heads=4, q_len=length, kv_len=length, device="cuda")
        mask = padding if mask is None else mask & padding
    selection = module.content_mask(q, k)
    assert selection.dense(length, length).float().mean() < 0.45  # 3 of 8 blocks, or fewer
    _, block_mask = module.plan(q, k, v, mask=mask, backend="flex")
    computed = block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()
    if query_block == 128:  # query tiles choose together: the unchosen key tiles are all skipped
        assert computed <= 3 * block_mask.kv_num_blocks.numel()
    got = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask), q, k, v)  # auto: Flex on CUDA
    want = values_and_grads(lambda q, k, v: module(q, k, v, mask=mask, backend="reference"), q, k, v)
    _check(got, want, atol=2e-4, rtol=2e-3)
    assert math.isfinite(got[0].abs().sum().item())


def test_auto_takes_the_block_sparse_path_on_long_cpu_inference_only():
    if flex_available() is not None:
        pytest.skip(flex_available())
    module = MoBA(block_size=256, top_k=3, causal=True).build(num_heads=2, head_dim=16)
    q, k, v = qkv(1, 2, 2, 2048, 2048, 16)
    assert module.chosen_backend(q, k, v) == "flex"
    assert module.chosen_backend(q[:, :, :512], k[:, :, :512], v[:, :, :512]) != "flex"
    q.requires_grad_()  # CPU training: no compiled Flex backward
    assert module.chosen_backend(q, k, v) != "flex"
