"""Every backend x every mask and score mod it claims, against the reference oracle (fp32 values
and gradients), on random shapes; plus the oracle itself against float64 textbook math."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_attention import attention
from shared_attention.backends.reference import reference_attention
from shared_attention.functional import explain
from shared_attention.masks import Causal, KeyPadding, SlidingWindow

from .cases import MASKS, SCORE_MODS, make_mask, make_score_mod, mod_tensors
from .conftest import assert_close, qkv

SETTINGS = settings(max_examples=30, deadline=None)


def textbook(q, k, v, allowed, bias, scale):
    """float64 per-row softmax attention, rows with no allowed key -> 0. q (B, H, Lq, D)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                keys = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                if not keys:
                    continue
                logits = torch.stack(
                    [q[b, h, i] @ k[b, h // group, j] * scale + bias[b, h, i, j] for j in keys]
                )
                weights = torch.softmax(logits, 0)
                out[b, h, i] = sum(
                    w * v[b, h // group, j] for w, j in zip(weights, keys, strict=True)
                )
    return out


shapes = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 2),
        "kv_heads": st.integers(1, 2),
        "group": st.integers(1, 3),
        "q_len": st.integers(1, 9),
        "extra": st.integers(0, 3),
        "head_dim": st.sampled_from([4, 8, 16]),
    }
)


@settings(max_examples=15, deadline=None)
@given(
    shape=shapes,
    mask_name=st.sampled_from(MASKS),
    mod_name=st.sampled_from(["none", "alibi", "bias"]),
)
def test_reference_matches_textbook(shape, mask_name, mod_name):
    b, hkv, h = shape["batch"], shape["kv_heads"], shape["kv_heads"] * shape["group"]
    lq, lk = shape["q_len"], shape["q_len"] + shape["extra"]
    if mask_name in (
        "neighborhood_2d",
        "edge_index",
        "relational_feature",
        "same_column",
        "document_causal",
        "dense_per_head",
    ):
        lq = lk  # self-attention masks
    q, k, v = qkv(b, h, hkv, lq, lk, shape["head_dim"])
    mask = make_mask(mask_name, batch=b, heads=h, q_len=lq, kv_len=lk)
    mod = make_score_mod(mod_name, batch=b, heads=h, q_len=lq, kv_len=lk)
    allowed = (
        torch.ones(b, h, lq, lk, dtype=torch.bool)
        if mask is None
        else mask.dense(lq, lk).expand(b, h, lq, lk)
    )
    bias = (
        torch.zeros(b, h, lq, lk)
        if mod is None
        else mod.additive_bias(b, h, lq, lk, device="cpu", dtype=torch.float32)
    )
    expected = textbook(q, k, v, allowed, bias, 0.3)
    assert_close(
        reference_attention(q, k, v, mask=mask, score_mod=mod, scale=0.3).double(), expected
    )


def test_fully_masked_rows_are_zero_with_finite_grads():
    q, k, v = qkv(1, 2, 2, 4, 4, 8, requires_grad=True)
    valid = torch.tensor([[False, False, False, False]])
    for backend in ("reference", "sdpa"):
        out = attention(q, k, v, mask=KeyPadding(valid=valid), backend=backend)
        assert torch.equal(out, torch.zeros_like(out))
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)


def run_and_grad(backend, q, k, v, mask, mod):
    inputs = [q, k, v, *mod_tensors(mod)]
    out = attention(q, k, v, mask=mask, score_mod=mod, backend=backend)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    grads = torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True)
    return out.detach(), [
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)
    ]


def make_call(shape, mask_name, mod_name, *, device="cpu", requires_grad=True, seed=0):
    b, hkv, h = shape["batch"], shape["kv_heads"], shape["kv_heads"] * shape["group"]
    lq, lk = shape["q_len"], shape["q_len"] + shape["extra"]
    if mask_name in (
        "neighborhood_2d",
        "edge_index",
        "relational_feature",
        "same_column",
        "document_causal",
        "dense_per_head",
    ):
        lq = lk
    q, k, v = qkv(
        b, h, hkv, lq, lk, shape["head_dim"], requires_grad=requires_grad, device=device, seed=seed
    )
    mask = make_mask(mask_name, batch=b, heads=h, q_len=lq, kv_len=lk, device=device, seed=seed)
    mod = make_score_mod(
        mod_name,
        batch=b,
        heads=h,
        q_len=lq,
        kv_len=lk,
        device=device,
        seed=seed,
        requires_grad=requires_grad,
    )
    return q, k, v, mask, mod


@SETTINGS
@given(shape=shapes, mask_name=st.sampled_from(MASKS), mod_name=st.sampled_from(SCORE_MODS))
def test_sdpa_matches_reference_values_and_grads(shape, mask_name, mod_name):
    q, k, v, mask, mod = make_call(shape, mask_name, mod_name)
    why = explain(q, k, v, mask=mask, score_mod=mod, backend="sdpa")
    if why.chosen is None:
        # Not claimed: it must refuse clearly rather than compute something else.
        assert mod_name in ("softcap", "temperature_per_head", "compose")
        with pytest.raises(ValueError, match="sdpa"):
            attention(q, k, v, mask=mask, score_mod=mod, backend="sdpa")
        return
    out, grads = run_and_grad("sdpa", q, k, v, mask, mod)
    ref_out, ref_grads = run_and_grad("reference", q, k, v, mask, mod)
    assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r, atol=1e-4, rtol=1e-3)


# Flex on CPU: compiled inference only, so forward values at a few fixed shapes (each new shape
# or mask structure compiles, a few seconds each).
FLEX_SHAPE = {"batch": 2, "kv_heads": 2, "group": 2, "q_len": 160, "extra": 0, "head_dim": 16}
FLEX_PAIRS = list(zip(MASKS, (SCORE_MODS * 2)[: len(MASKS)], strict=True))


@pytest.mark.parametrize(("mask_name", "mod_name"), FLEX_PAIRS)
def test_flex_cpu_inference_matches_reference(mask_name, mod_name):
    q, k, v, mask, mod = make_call(FLEX_SHAPE, mask_name, mod_name, requires_grad=False)
    with torch.no_grad():
        out = attention(q, k, v, mask=mask, score_mod=mod, backend="flex")
        ref = attention(q, k, v, mask=mask, score_mod=mod, backend="reference")
    assert_close(out, ref)


def test_flex_cpu_decoding_shape():
    # Lq < Lk (a KV cache step), GQA, a score mod reading query positions.
    q, k, v = qkv(1, 4, 1, 3, 40, 16)
    for mask in (Causal(), SlidingWindow(8)):
        with torch.no_grad():
            out = attention(
                q,
                k,
                v,
                mask=mask,
                score_mod=make_score_mod("alibi", batch=1, heads=4, q_len=3, kv_len=40),
                backend="flex",
            )
            ref = attention(
                q,
                k,
                v,
                mask=mask,
                score_mod=make_score_mod("alibi", batch=1, heads=4, q_len=3, kv_len=40),
                backend="reference",
            )
        assert_close(out, ref)


def test_flex_refuses_cpu_training():
    q, k, v = qkv(1, 2, 2, 8, 8, 16, requires_grad=True)
    with pytest.raises(ValueError, match="no backward on CPU"):
        attention(q, k, v, mask=Causal(), backend="flex")


# --- CUDA: SDPA and Flex, forward and backward, against the oracle --------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_SHAPE = {"batch": 2, "kv_heads": 2, "group": 2, "q_len": 300, "extra": 0, "head_dim": 64}
# Each Flex structure compiles a forward and a backward kernel: a representative subset.
GPU_FLEX_PAIRS = [
    ("causal", "alibi"),
    ("sliding_causal", "softcap"),
    ("document_causal", "relative_bias"),
    ("neighborhood_2d", "none"),
    ("edge_index", "forget_gate"),
    ("relational_feature", "temperature_per_head"),
    ("dense_per_head", "bias"),
]


def check_against_reference(backend, mask_name, mod_name, *, atol, rtol, dtype=torch.float32):
    q, k, v, mask, mod = make_call(GPU_SHAPE, mask_name, mod_name, device="cuda")
    ref_out, ref_grads = run_and_grad("reference", q, k, v, mask, mod)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, grads = run_and_grad(backend, *low, mask, mod)
    assert_close(out.float(), ref_out, atol=atol, rtol=rtol)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g.float(), r, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mask_name", MASKS)
def test_sdpa_cuda_matches_reference(mask_name):
    mod_name = "alibi" if mask_name != "none" else "bias"
    check_against_reference("sdpa", mask_name, mod_name, atol=2e-4, rtol=2e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("mask_name", "mod_name"), GPU_FLEX_PAIRS)
def test_flex_cuda_matches_reference(mask_name, mod_name):
    check_against_reference("flex", mask_name, mod_name, atol=2e-4, rtol=2e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_bf16_cuda_close_to_fp32_reference(backend):
    check_against_reference(
        backend, "sliding_causal", "alibi", atol=3e-2, rtol=3e-2, dtype=torch.bfloat16
    )


@pytest.mark.gpu
@needs_cuda
def test_cuda_auto_dispatch_trains_through_flex():
    q, k, v = qkv(1, 4, 4, 4096, 4096, 64, requires_grad=True, device="cuda")
    why = explain(q, k, v, mask=SlidingWindow(256))
    assert why.chosen == "flex", str(why)
