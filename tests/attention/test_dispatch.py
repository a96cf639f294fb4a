"""Dispatch: automatic choices per device and mode, overrides, explanations, the registry."""

from __future__ import annotations

import pytest
import torch

from shared_attention import attention, explain
from shared_attention.dispatch import Case, backends, register, select
from shared_attention.dispatch import explain as explain_case
from shared_attention.masks import Causal, Chunked, KeyPadding, Neighborhood, SlidingWindow
from shared_attention.score_mods import ALiBi, SoftCap

from .conftest import qkv


def chosen(length, *, mask=None, score_mod=None, requires_grad=False, head_dim=16):
    q, k, v = qkv(1, 2, 2, length, length, head_dim, requires_grad=requires_grad)
    return explain(q, k, v, mask=mask, score_mod=score_mod).chosen


def test_dense_and_causal_go_to_sdpa():
    for requires_grad in (False, True):
        assert chosen(64, requires_grad=requires_grad) == "sdpa"
        assert chosen(2048, mask=Causal(), requires_grad=requires_grad) == "sdpa"
        padding = KeyPadding(lengths=torch.tensor([30]))
        assert chosen(64, mask=padding, requires_grad=requires_grad) == "sdpa"


def test_block_sparse_at_long_length_goes_to_flex_for_inference_only():
    assert chosen(4096, mask=SlidingWindow(256)) == "flex"
    assert chosen(2048, mask=Chunked(128)) == "flex"
    # Short: a dense mask over few pairs is cheaper than Flex's block bookkeeping.
    assert chosen(256, mask=SlidingWindow(32)) == "sdpa"
    # CPU training cannot use compiled Flex (no CPU backward).
    assert chosen(4096, mask=SlidingWindow(256), requires_grad=True) == "sdpa"


def test_cpu_mask_rule_follows_the_measured_tile_costs():
    # Cheap predicates pay off from a few skipped tiles on...
    assert chosen(256, mask=Chunked(128)) == "flex"
    assert chosen(512, mask=SlidingWindow(64)) == "flex"
    # ...but not when nearly every tile is computed anyway (key padding of a long sequence)...
    assert chosen(2048, mask=KeyPadding(lengths=torch.tensor([1900]))) == "sdpa"
    # ...and the costlier 2-D neighborhood predicate needs more of them skipped.
    assert chosen(1024, mask=Neighborhood((32, 32), 7)) == "sdpa"
    assert chosen(4096, mask=Neighborhood((64, 64), 7)) == "flex"


def test_score_mods_sdpa_cannot_take():
    assert chosen(64, mask=Causal(), score_mod=ALiBi(2)) == "sdpa"  # additive: a float mask
    # Longer: SDPA's materialised bias costs more than Flex's fused score mod (inference).
    assert chosen(2048, mask=Causal(), score_mod=ALiBi(2)) == "flex"
    assert chosen(2048, mask=Causal(), score_mod=ALiBi(2), requires_grad=True) == "sdpa"
    assert chosen(64, mask=Causal(), score_mod=SoftCap(5.0)) == "flex"
    assert chosen(64, mask=Causal(), score_mod=SoftCap(5.0), requires_grad=True) == "reference"
    # Flex needs head dim >= 16.
    assert chosen(64, mask=Causal(), score_mod=SoftCap(5.0), head_dim=8) == "reference"


def test_explain_names_every_rejected_backend_and_why():
    q, k, v = qkv(1, 2, 2, 8, 8, 16, requires_grad=True)
    why = explain(q, k, v, mask=Causal(), score_mod=SoftCap(5.0))
    assert why.chosen == "reference"
    assert "not an additive bias" in why.rejected["sdpa"]
    assert "no backward on CPU" in why.rejected["flex"]
    text = str(why)
    assert "reference" in text and "training" in text


def test_override_runs_named_backend_or_fails_clearly():
    q, k, v = qkv(1, 2, 2, 8, 8, 16)
    out = attention(q, k, v, mask=Causal(), backend="reference")
    assert out.shape == (1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"backend .sdpa. cannot run.*SoftCap"):
        attention(q, k, v, score_mod=SoftCap(2.0), backend="sdpa")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        attention(q, k, v, backend="nope")


def test_shape_errors_are_clear():
    q, k, v = qkv(1, 3, 2, 8, 8, 16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention(q, k, v)
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        attention(q[0], k[0], v[0])


class _Toy:
    """A backend for a made-up op, to show other ops can register their own."""

    def __init__(self, name, rank, supported=True):
        self.name, self._rank, self._supported = name, rank, supported

    def supports(self, case):
        return None if self._supported else "toy says no"

    def rank(self, case):
        return self._rank

    def __call__(self, x):
        return self.name


def test_registry_for_another_op():
    register("toy-op", _Toy("slow", 50.0))
    register("toy-op", _Toy("fast", 1.0))
    register("toy-op", _Toy("broken", 0.0, supported=False))
    case = Case("toy-op", "cpu", torch.float32, False, 1, 1, 1, 4, 4, 8, 8)
    assert set(backends("toy-op")) == {"slow", "fast", "broken"}
    assert select(case)(None) == "fast"
    why = explain_case(case)
    assert why.rejected == {"broken": "toy says no", "slow": "supported but ranked lower (50 vs 1)"}
    assert select(case, "slow")(None) == "slow"
    with pytest.raises(ValueError, match="toy says no"):
        select(case, "broken")
    with pytest.raises(KeyError, match="no backends registered"):
        backends("missing-op")
