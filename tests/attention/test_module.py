"""The Attention module against a hand-written composition of projections and the oracle."""

from __future__ import annotations

import pytest
import torch

from shared_attention import Attention, KVCache
from shared_attention.backends.reference import reference_attention
from shared_attention.masks import Causal, KeyPadding, Neighborhood
from shared_attention.positions import (
    ALiBi,
    CoPE,
    LearnedAbsolute,
    NoPosition,
    RoPE,
    Sinusoidal,
    rotate,
)
from shared_attention.score_mods import ALiBi as ALiBiScoreMod
from shared_attention.score_mods import Compose, ForgetGate, RelativeBias, SoftCap
from shared_attention.variants import Softmax

from .conftest import assert_close


def manual_attention(layer: Attention, x, *, context=None, mask=None, score_mod=None):
    """The layer's math spelled out with the reference backend (no positions)."""
    batch, length, _ = x.shape
    source = x if context is None else context
    h, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(batch, length, h, d).transpose(1, 2)
    k, v = layer.kv_proj(source).view(batch, source.shape[1], 2, hkv, d).permute(2, 0, 3, 1, 4)
    out = reference_attention(q, k, v, mask=mask, score_mod=score_mod, scale=d**-0.5)
    return layer.out_proj(out.transpose(1, 2).reshape(batch, length, h * d))


def test_self_attention_with_key_padding_matches_manual():
    layer = Attention(32, 4, dropout=0.1).eval()
    x = torch.randn(2, 9, 32)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    out = layer(x, key_padding_mask=valid)
    assert out.shape == (2, 9, 32)
    assert_close(out, manual_attention(layer, x, mask=KeyPadding(valid=valid)))


def test_padding_changes_only_what_it_should():
    layer = Attention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    valid = torch.tensor([[True, True, True, True, False, False]])
    padded = layer(x, key_padding_mask=valid)
    # Changing padded tokens must not change real tokens' outputs.
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16)
    assert_close(layer(x2, key_padding_mask=valid)[:, :4], padded[:, :4])
    assert not torch.allclose(layer(x)[:, :4], padded[:, :4])


def test_backends_agree_and_train():
    layer = Attention(32, 4, num_kv_heads=2)
    x = torch.randn(2, 7, 32, requires_grad=True)
    outs = {}
    for backend in ("reference", "sdpa", "auto"):
        layer.zero_grad()
        out = layer(x, backend=backend)
        out.square().mean().backward()
        outs[backend] = (out.detach(), layer.q_proj.weight.grad.clone())
    for backend in ("sdpa", "auto"):
        assert_close(outs[backend][0], outs["reference"][0])
        assert_close(outs[backend][1], outs["reference"][1])


def test_cross_attention_with_gqa_matches_manual():
    layer = Attention(24, 6, num_kv_heads=2, kv_dim=10).eval()
    x, context = torch.randn(2, 5, 24), torch.randn(2, 7, 10)
    valid = torch.rand(2, 7) > 0.3
    valid[:, 0] = True
    out = layer(x, context=context, key_padding_mask=valid)
    assert_close(out, manual_attention(layer, x, context=context, mask=KeyPadding(valid=valid)))


def test_head_dim_and_validation():
    layer = Attention(10, 4, head_dim=8)
    assert layer(torch.randn(1, 3, 10)).shape == (1, 3, 10)
    with pytest.raises(ValueError):
        Attention(10, 4)
    with pytest.raises(ValueError):
        Attention(12, 4, num_kv_heads=3)


def test_rope_in_module_matches_manual_rotation():
    layer = Attention(32, 4, position=RoPE()).eval()
    x = torch.randn(2, 6, 32)
    batch, length, h, d = 2, 6, 4, 8
    q = layer.q_proj(x).view(batch, length, h, d).transpose(1, 2)
    k, v = layer.kv_proj(x).view(batch, length, 2, h, d).permute(2, 0, 3, 1, 4)
    pos = torch.arange(length)
    q, k = rotate(q, pos), rotate(k, pos)
    expected = reference_attention(q, k, v, mask=Causal())
    expected = layer.out_proj(expected.transpose(1, 2).reshape(batch, length, h * d))
    assert_close(layer(x, mask=Causal()), expected)


@pytest.mark.parametrize(
    "position", [RoPE(), ALiBi(), Sinusoidal(), LearnedAbsolute(max_len=32), NoPosition()], ids=repr
)
def test_kv_cache_decoding_matches_full_forward(position):
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2, position=position).eval()
    x = torch.randn(2, 9, 32)
    full = layer(x, mask=Causal())
    cache = KVCache(2, 2, 16, 8)
    steps = [layer(x[:, :5], mask=Causal(), cache=cache)]  # prompt
    for t in range(5, 9):  # then one token at a time
        steps.append(layer(x[:, t : t + 1], mask=Causal(), cache=cache))
    assert cache.offset == 9
    assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("score_mod", [RelativeBias(4), ForgetGate()], ids=repr)
def test_learned_score_mods_train_and_match_manual(score_mod):
    layer = Attention(16, 2, score_mod=score_mod)
    params = dict(layer.score_mod_module.named_parameters())
    for p in params.values():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 6, 16)
    out = layer(x, mask=Causal(), backend="reference")
    assert_close(
        out, manual_attention(layer, x, mask=Causal(), score_mod=layer.score_mod_module(x))
    )
    assert_close(layer(x, mask=Causal(), backend="sdpa"), out)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_fixed_and_per_call_score_mods_compose():
    layer = Attention(16, 2, score_mod=SoftCap(3.0)).eval()
    x = torch.randn(1, 5, 16)
    mod = Compose((ALiBiScoreMod(2), SoftCap(3.0)))
    # Per-call mods come after the layer's own.
    got = layer(x, score_mod=ALiBiScoreMod(2))
    expected = manual_attention(layer, x, score_mod=Compose((SoftCap(3.0), ALiBiScoreMod(2))))
    assert_close(got, expected)
    assert not torch.allclose(got, manual_attention(layer, x, score_mod=mod))


def test_cope_in_module_trains():
    layer = Attention(16, 2, position=CoPE(max_positions=8))
    torch.nn.init.normal_(layer.position.embedding)
    x = torch.randn(2, 6, 16)
    out = layer(x, mask=Causal())
    assert_close(layer(x, mask=Causal(), backend="reference"), out)
    out.sum().backward()
    assert layer.position.embedding.grad.abs().sum() > 0


def test_softmax_variant_equals_default():
    torch.manual_seed(1)
    plain = Attention(16, 2).eval()
    torch.manual_seed(1)
    with_variant = Attention(16, 2, variant=Softmax()).eval()
    x = torch.randn(2, 5, 16)
    assert_close(with_variant(x, mask=Causal()), plain(x, mask=Causal()))


def test_dropout_only_in_training():
    layer = Attention(16, 2, dropout=0.5)
    x = torch.randn(2, 5, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_axial_rope_module_on_a_grid():
    layer = Attention(32, 2, position=RoPE(axes=2, grid=(3, 4))).eval()
    x = torch.randn(1, 12, 32)
    out = layer(x, mask=Neighborhood((3, 4), 3))
    assert out.shape == (1, 12, 32)
    assert_close(layer(x, mask=Neighborhood((3, 4), 3), backend="reference"), out)


def test_layers_share_one_padding_mask_per_forward():
    from shared_attention.api import _with_padding

    valid = torch.ones(2, 5, dtype=torch.bool)
    causal = Causal()
    # Same tensor and mask: the same object (its lowerings are built once for all layers).
    assert _with_padding(causal, valid) is _with_padding(causal, valid)
    assert _with_padding(None, valid) is _with_padding(None, valid)
    # An in-place edit of the padding tensor must not reuse the stale mask.
    before = _with_padding(None, valid)
    valid[0, 4] = False
    after = _with_padding(None, valid)
    assert after is not before
    assert not after.dense(5, 5)[0, 0, 0, 4]


def test_key_padding_under_inference_mode_and_compile():
    # The padded-mask cache reads the mask tensor's version counter, which inference tensors lack and
    # which torch.compile cannot trace: both skip the cache and give the same output.
    torch.manual_seed(0)
    layer = Attention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        expected = layer(x, key_padding_mask=valid)
    with torch.inference_mode():
        actual = layer(x.clone(), key_padding_mask=valid.clone())
    torch.testing.assert_close(actual, expected)
    compiled = torch.compile(layer, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, key_padding_mask=valid), expected)


def test_masks_from_the_batch_compile_without_graph_breaks():
    """Dispatch inside torch.compile reads nothing back from the device: a layer whose masks are built from the
    batch (foreign keys and key padding, long enough for Flex's rule) traces as one graph, equal to eager."""
    from shared_attention.masks import ForeignKey

    torch.manual_seed(0)
    layer = Attention(32, 2).eval()
    batch, length, rows = 2, 512, 64
    x = torch.randn(batch, length, 32)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, 300:] = False
    row_ids = torch.randint(0, rows, (batch, length))
    parents = torch.randint(-1, rows, (batch, length, 2))

    def forward(x, valid, row_ids, parents):
        mask = ForeignKey.from_neighbours(row_ids, parents, num_rows=rows)
        return layer(x, mask=mask, key_padding_mask=valid)

    with torch.no_grad():
        explained = torch._dynamo.explain(forward)(x, valid, row_ids, parents)
        assert explained.graph_break_count == 0, [b.reason[:120] for b in explained.break_reasons]
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(forward, backend="eager")(x, valid, row_ids, parents),
                                   forward(x, valid, row_ids, parents))


def test_traced_dispatch_sends_structured_masks_to_flex_on_cuda(monkeypatch):
    """Inside a trace Flex is ranked by the mask's kind (its tile counts would need a device read): key padding
    alone stays on SDPA, other masks go to Flex on CUDA, nothing goes to Flex on the CPU."""
    from dataclasses import replace

    from shared_attention.backends.flex import FlexBackend
    from shared_attention.functional import make_case
    from shared_attention.masks import Dense

    q = torch.randn(1, 2, 2048, 16)
    padding = KeyPadding(valid=torch.ones(1, 2048, dtype=torch.bool))
    structured = Dense(torch.rand(1, 1, 2048, 2048) > 0.5) & padding
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    rank = lambda mask, device: FlexBackend().rank(replace(make_case(q, q, q, mask=mask), device_type=device))  # noqa: E731
    assert rank(padding, "cuda") == 50.0
    assert rank(structured, "cuda") == 12.0
    assert rank(structured, "cpu") == 50.0
