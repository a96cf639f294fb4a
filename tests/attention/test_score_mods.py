"""Score mods: the materialised form against hand-written math, the Flex lowering (evaluated per
element under vmap) against the materialised form, and the additive bias SDPA receives."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_attention.score_mods import (
    ALiBi,
    Bias,
    Compose,
    ForgetGate,
    RelativeBias,
    SoftCap,
    Temperature,
    alibi_slopes,
)

from .conftest import assert_close

SETTINGS = settings(max_examples=20, deadline=None)


def via_flex(mod, scores: torch.Tensor) -> torch.Tensor:
    """Apply the Flex score_mod element by element, as FlexAttention does."""
    batch, heads, q_len, kv_len = scores.shape
    fn = mod.flex(q_len, kv_len)
    fn = torch.vmap(fn, in_dims=(0, None, None, None, 0))
    fn = torch.vmap(fn, in_dims=(0, None, None, 0, None))
    fn = torch.vmap(fn, in_dims=(0, None, 0, None, None))
    fn = torch.vmap(fn, in_dims=(0, 0, None, None, None))
    return fn(
        scores, torch.arange(batch), torch.arange(heads), torch.arange(q_len), torch.arange(kv_len)
    )


def check_lowerings(mod, scores, expected):
    assert_close(mod.apply(scores), expected)
    assert_close(via_flex(mod, scores), expected)
    if mod.additive:
        b, h, lq, lk = scores.shape
        bias = mod.additive_bias(b, h, lq, lk, device=scores.device, dtype=scores.dtype)
        assert_close(scores + bias, expected)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 6), st.integers(0, 3))


def distances(q_len, kv_len):
    """kv position - query position, with queries aligned to the end of the keys."""
    i = torch.arange(q_len)[:, None] + (kv_len - q_len)
    return (torch.arange(kv_len)[None] - i).float()


def test_alibi_slopes_match_paper():
    assert alibi_slopes(8) == [2 ** (-(i + 1)) for i in range(8)]
    # 6 heads: the 4-head series, then every other slope of the 8-head series.
    assert alibi_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]


@SETTINGS
@given(shape=shapes, causal=st.booleans())
def test_alibi(shape, causal):
    batch, heads, q_len, extra = shape
    kv_len = q_len + extra
    scores = torch.randn(batch, heads, q_len, kv_len)
    slopes = torch.tensor(alibi_slopes(heads))[:, None, None]
    dist = distances(q_len, kv_len)
    expected = scores + slopes * (dist if causal else -dist.abs())
    check_lowerings(ALiBi(heads, causal=causal), scores, expected)


@SETTINGS
@given(shape=shapes, cap=st.floats(0.5, 30.0))
def test_softcap(shape, cap):
    batch, heads, q_len, extra = shape
    scores = 10 * torch.randn(batch, heads, q_len, q_len + extra)
    check_lowerings(SoftCap(cap), scores, cap * torch.tanh(scores / cap))
    assert (SoftCap(cap).apply(scores).abs() <= cap).all()


@SETTINGS
@given(shape=shapes, tau=st.floats(0.1, 4.0))
def test_temperature(shape, tau):
    batch, heads, q_len, extra = shape
    scores = torch.randn(batch, heads, q_len, q_len + extra)
    check_lowerings(Temperature(tau), scores, scores / tau)
    per_head = torch.rand(heads) + 0.5
    check_lowerings(Temperature(per_head), scores, scores / per_head[:, None, None])


@SETTINGS
@given(shape=shapes, max_distance=st.integers(1, 4))
def test_relative_bias_table(shape, max_distance):
    batch, heads, q_len, extra = shape
    kv_len = q_len + extra
    module = RelativeBias(max_distance).build(dim=8, num_heads=heads)
    with torch.no_grad():
        module.table.normal_()
    mod = module(None)
    scores = torch.randn(batch, heads, q_len, kv_len)
    index = distances(q_len, kv_len).long().clamp(-max_distance, max_distance) + max_distance
    check_lowerings(mod, scores, scores + module.table[:, index])


def test_relative_bias_learns():
    module = RelativeBias(3).build(dim=8, num_heads=2)
    scores = torch.randn(1, 2, 4, 4)
    module(None).apply(scores).square().sum().backward()
    assert module.table.grad is not None and module.table.grad.abs().sum() > 0


@SETTINGS
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    length=st.integers(1, 6),
    extra=st.integers(0, 2),
)
def test_forget_gate_is_sum_of_log_gates(batch, heads, length, extra):
    dim = 5
    module = ForgetGate().build(dim=dim, num_heads=heads)
    with torch.no_grad():
        module.gate.weight.normal_()
    x = torch.randn(batch, length + extra, dim)
    mod = module(x)
    log_f = torch.nn.functional.logsigmoid(module.gate(x)).transpose(1, 2)  # (B, H, Lk)
    kv_len, q_len = length + extra, length
    expected_bias = torch.zeros(batch, heads, q_len, kv_len)
    for i in range(q_len):
        pos = i + extra
        for j in range(kv_len):
            # sum_{l=j+1..i} log f_l (negative of that sum above the diagonal, which is masked)
            if j <= pos:
                expected_bias[:, :, i, j] = log_f[:, :, j + 1 : pos + 1].sum(-1)
            else:
                expected_bias[:, :, i, j] = -log_f[:, :, pos + 1 : j + 1].sum(-1)
    scores = torch.randn(batch, heads, q_len, kv_len)
    check_lowerings(mod, scores, scores + expected_bias)


@SETTINGS
@given(shape=shapes)
def test_bias_broadcasts(shape):
    batch, heads, q_len, extra = shape
    kv_len = q_len + extra
    scores = torch.randn(batch, heads, q_len, kv_len)
    for bias in (
        torch.randn(batch, heads, q_len, kv_len),
        torch.randn(1, heads, q_len, kv_len),
        torch.randn(batch, 1, q_len, kv_len),
    ):
        check_lowerings(Bias(bias), scores, scores + bias)


def test_compose_applies_in_order():
    scores = 5 * torch.randn(2, 4, 3, 5)
    mod = Compose((ALiBi(4), SoftCap(2.0), Temperature(0.5)))
    expected = 2.0 * torch.tanh(ALiBi(4).apply(scores) / 2.0) / 0.5
    check_lowerings(mod, scores, expected)
    assert not mod.additive
    assert Compose((ALiBi(4), RelativeBias(2).build(dim=4, num_heads=4)(None))).additive


def test_alibi_closed_form_covers_odd_head_counts():
    for heads in (1, 3, 5, 7, 12):
        got = ALiBi(heads)._slope(torch.arange(heads))
        assert_close(got, torch.tensor(alibi_slopes(heads)))
        assert all(math.isfinite(s) for s in got.tolist())
