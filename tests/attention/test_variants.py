"""Attention variants against their reference math (materialised, fp32/fp64): values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_attention import Attention, dispatch
from shared_attention.backends.reference import reference_attention
from shared_attention.functional import make_case
from shared_attention.masks import Causal, KeyPadding, SlidingWindow
from shared_attention.score_mods import ALiBi
from shared_attention.variants import (
    Differential,
    Entmax15,
    GatedLocalGlobalAttention,
    LinearAttention,
    Sinks,
    Softmax,
    Sparsemax,
    entmax15,
    gated_local_global_attention,
    gated_local_global_attention_reference,
    lambda_init_for,
    sparse_attention,
    sparsemax,
)

from .cases import make_mask, make_score_mod
from .conftest import assert_close, qkv

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MASK_CASES = ["none", "causal", "key_padding", "sliding_symmetric", "edge_index", "causal_and_padding"]
MOD_CASES = ["none", "alibi", "softcap", "bias"]


def _grads(out, inputs, *, seed=3):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]


def _expand(k, v, heads):
    group = heads // k.shape[1]
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def _masked_scores(q, k, *, mask, score_mod, scale):
    """Materialised logits with -inf where masked, and which rows have any key."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if score_mod is not None:
        scores = score_mod.apply(scores)
    if mask is None:
        return scores, torch.ones(*scores.shape[:-1], 1, dtype=torch.bool)
    allowed = mask.dense(q.shape[-2], k.shape[-2], device=q.device)
    has_key = allowed.any(-1, keepdim=True)
    return scores.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0), has_key


# --- softmax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_name", MASK_CASES)
def test_softmax_variant_is_functional_attention(mask_name):
    q, k, v = qkv(2, 4, 2, 6, 6, 8, requires_grad=True)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=6, kv_len=6)
    module = Softmax().build(num_heads=4, head_dim=8)
    out = module(q, k, v, mask=mask, backend="sdpa")
    expected = reference_attention(q, k, v, mask=mask)
    assert_close(out, expected)
    for got, ref in zip(_grads(out, (q, k, v)), _grads(expected, (q, k, v)), strict=True):
        assert_close(got, ref)


# --- differential ----------------------------------------------------------------------------------


def differential_reference(q, k, v, module, *, mask=None, score_mod=None):
    """(softmax(q1 k1^T s) - lambda softmax(q2 k2^T s)) v as ONE materialised matrix, then RMSNorm."""
    k, v = _expand(k, v, q.shape[1])
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    scale = q1.shape[-1] ** -0.5

    def probs(qa, ka):
        scores, has_key = _masked_scores(qa, ka, mask=mask, score_mod=score_mod, scale=scale)
        return scores.softmax(-1) * has_key

    lam = (
        torch.exp((module.lambda_q1 * module.lambda_k1).sum())
        - torch.exp((module.lambda_q2 * module.lambda_k2).sum())
        + module.lambda_init
    )
    out = (probs(q1, k1) - lam * probs(q2, k2)) @ v
    rms = out.pow(2).mean(-1, keepdim=True).add(module.eps).rsqrt()
    return out * rms * module.norm_weight * (1 - module.lambda_init)


@pytest.mark.parametrize("mask_name", MASK_CASES)
@pytest.mark.parametrize("mod_name", ["none", "alibi"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_differential_matches_reference(mask_name, mod_name, backend):
    q, k, v = qkv(2, 4, 2, 7, 7, 8, requires_grad=True)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=7, kv_len=7)
    mod = make_score_mod(mod_name, batch=2, heads=4, q_len=7, kv_len=7)
    module = Differential(layer_index=3).build(num_heads=4, head_dim=8)
    with torch.no_grad():
        module.norm_weight.uniform_(0.5, 1.5)
    params = (q, k, v, *module.parameters())
    out = module(q, k, v, mask=mask, score_mod=mod, backend=backend)
    expected = differential_reference(q, k, v, module, mask=mask, score_mod=mod)
    assert_close(out, expected, atol=5e-5, rtol=2e-4)
    for got, ref in zip(_grads(out, params), _grads(expected, params), strict=True):
        assert_close(got, ref, atol=5e-5, rtol=2e-4)


def test_differential_identities_with_two_softmax_attentions():
    q, k, v = qkv(1, 2, 2, 5, 5, 8)
    module = Differential(layer_index=0).build(num_heads=2, head_dim=8)
    q1, _ = q.chunk(2, -1)
    k1, _ = k.chunk(2, -1)
    a1 = reference_attention(q1, k1, v, mask=Causal(), scale=4**-0.5)

    def normed(x):
        return F.rms_norm(x, (8,), module.norm_weight, module.eps) * (1 - module.lambda_init)

    # lambda = 0 (q-side lambda vectors zero, lambda_init cancelled): the first softmax alone.
    with torch.no_grad():
        for p in (module.lambda_q1, module.lambda_q2):
            p.zero_()
        module.lambda_init = 0.0
    assert_close(module(q, k, v, mask=Causal()), normed(a1))
    # Identical halves: (1 - lambda) A1 v, and RMSNorm removes the scalar (1 - lambda > 0).
    module.lambda_init = lambda_init_for(2)
    same_q, same_k = torch.cat((q1, q1), -1), torch.cat((k1, k1), -1)
    assert module.lambda_full() < 1
    assert_close(module(same_q, same_k, v, mask=Causal()), normed(a1), atol=1e-4, rtol=1e-3)


def test_lambda_init_schedule():
    assert lambda_init_for(0) == pytest.approx(0.2)
    assert lambda_init_for(1) == pytest.approx(0.8 - 0.6 * torch.e**-0.3)
    assert lambda_init_for(100) == pytest.approx(0.8)


# --- sparsemax / entmax-1.5 ------------------------------------------------------------------------


def _bisect(z, mapping, lo, hi, iters=200):
    """Solve sum(mapping(z - tau)) = 1 for tau by bisection (a second, independent algorithm)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_big = mapping(z - mid).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    return mapping(z - (lo + hi) / 2)


def sparsemax_bisect(z):
    top = z.amax(-1, keepdim=True)
    return _bisect(z, lambda t: t.clamp(min=0), top - 1, top)


def entmax15_bisect(z):
    half = z / 2
    top = half.amax(-1, keepdim=True)
    return _bisect(half, lambda t: t.clamp(min=0) ** 2, top - 1, top)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 4), n=st.integers(1, 12), scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 999))
def test_sparse_maps_match_bisection(rows, n, scale, seed):
    z = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    for fast, slow in ((sparsemax, sparsemax_bisect), (entmax15, entmax15_bisect)):
        p = fast(z)
        torch.testing.assert_close(p, slow(z), atol=1e-9, rtol=1e-7)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(rows, dtype=torch.float64))


def test_sparse_maps_known_values_and_sparsity():
    z = torch.tensor([[0.5, 0.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z), torch.tensor([[0.75, 0.25, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(entmax15(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
    assert entmax15(z)[0, 2] == 0 and entmax15(z)[0, 1] > 0
    # -inf (masked) entries get exactly zero.
    masked = torch.tensor([[1.0, float("-inf"), 0.9]])
    assert sparsemax(masked)[0, 1] == 0 and entmax15(masked)[0, 1] == 0


@pytest.mark.parametrize("fn", [sparsemax, entmax15])
def test_sparse_maps_gradcheck(fn):
    z = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.autograd.gradcheck(fn, (z.requires_grad_(),))
    z2 = torch.randn(2, 4, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, dim=1), (z2,))


@pytest.mark.parametrize("transform", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("mask_name", MASK_CASES)
@pytest.mark.parametrize("mod_name", MOD_CASES)
def test_sparse_attention_matches_bisection_reference(transform, mask_name, mod_name):
    q, k, v = qkv(2, 4, 2, 6, 6, 8)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=6, kv_len=6)
    mod = make_score_mod(mod_name, batch=2, heads=4, q_len=6, kv_len=6)
    module = (Sparsemax() if transform == "sparsemax" else Entmax15()).build(num_heads=4, head_dim=8)
    out = module(q, k, v, mask=mask, score_mod=mod)
    kd, vd = _expand(k.double(), v.double(), 4)
    scores, has_key = _masked_scores(q.double(), kd, mask=mask, score_mod=mod, scale=8**-0.5)
    probs = (sparsemax_bisect if transform == "sparsemax" else entmax15_bisect)(scores) * has_key
    assert_close(out, (probs @ vd).float())


@pytest.mark.parametrize("transform", ["sparsemax", "entmax15"])
def test_sparse_attention_gradcheck_with_mask_and_score_mod(transform):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    mask = make_mask("edge_index", batch=1, heads=2, q_len=4, kv_len=4)  # has rows with no key

    def fn(q, k, v):
        return sparse_attention(q, k, v, transform=transform, mask=mask, score_mod=ALiBi(2), scale=0.9)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_sparse_attention_rejects_other_backends():
    q, k, v = qkv(1, 2, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="one implementation"):
        Sparsemax().build(num_heads=2, head_dim=4)(q, k, v, backend="sdpa")


# --- linear attention ------------------------------------------------------------------------------


def linear_reference(q, k, v, *, causal, feature_map, normalize, key_valid=None, decay_logits=None, eps=1e-6):
    """phi(q) phi(k)^T materialised, masked, decayed, optionally row-normalised; fp64."""
    from shared_attention.variants.linear import FEATURE_MAPS

    q, k, v = q.double(), k.double(), v.double()
    k, v = _expand(k, v, q.shape[1])
    phi = FEATURE_MAPS[feature_map]
    weights = (phi(q) * q.shape[-1] ** -0.5) @ phi(k).transpose(-1, -2)
    if causal:
        weights = weights.tril()
    if decay_logits is not None:
        # Head h forgets at rate g_h per step: weight g_h^(i - j).
        steps = torch.arange(q.shape[2], device=q.device)
        distance = (steps[:, None] - steps[None, :]).clamp(min=0).double()
        weights = weights * torch.sigmoid(decay_logits.double())[:, None, None] ** distance
    if key_valid is not None:
        weights = weights * key_valid[:, None, None, :]
    out = weights @ v
    return out / (weights.sum(-1, keepdim=True) + eps) if normalize else out


# relu and dpfp features can leave a query with a near-zero normaliser (an ill-conditioned
# division), so they are compared un-normalised; elu + 1 is positive and compared both ways.
@pytest.mark.parametrize("backend", ["reference", "chunked", "kernel", "auto"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("feature_map", "normalize"), [("elu", True), ("relu", False), ("dpfp", False), ("elu", False)])
def test_linear_attention_matches_reference(backend, causal, feature_map, normalize):
    q, k, v = qkv(2, 4, 2, 70, 70, 8, requires_grad=True)
    module = LinearAttention(causal=causal, feature_map=feature_map, normalize=normalize).build(num_heads=4, head_dim=8)
    out = module(q, k, v, backend=backend)
    expected = linear_reference(q, k, v, causal=causal, feature_map=feature_map, normalize=normalize).float()
    tol = dict(atol=1e-4, rtol=1e-4)
    assert_close(out, expected, **tol)
    for got, ref in zip(_grads(out, (q, k, v)), _grads(expected, (q, k, v)), strict=True):
        assert_close(got, ref, **tol)


@pytest.mark.parametrize("backend", ["reference", "kernel"])
def test_linear_attention_masks_causal_and_key_padding(backend):
    q, k, v = qkv(2, 2, 2, 9, 9, 4)
    valid = torch.rand(2, 9, generator=torch.Generator().manual_seed(0)) > 0.3
    module = LinearAttention(causal=False).build(num_heads=2, head_dim=4)
    out = module(q, k, v, mask=Causal() & KeyPadding(valid=valid), backend=backend)
    expected = linear_reference(q, k, v, causal=True, feature_map="elu", normalize=True, key_valid=valid)
    assert_close(out, expected.float())


@pytest.mark.parametrize("backend", ["reference", "chunked", "kernel"])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_with_decay_matches_reference(backend, normalize):
    q, k, v = qkv(2, 4, 2, 70, 70, 8, requires_grad=True)
    module = LinearAttention(decay=True, normalize=normalize).build(num_heads=4, head_dim=8)
    with torch.no_grad():
        module.decay_logits.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))  # forget fast enough to matter
    out = module(q, k, v, backend=backend)
    expected = linear_reference(
        q, k, v, causal=True, feature_map="elu", normalize=normalize, decay_logits=module.decay_logits
    ).float()
    assert_close(out, expected, atol=1e-4, rtol=1e-4)
    params = (q, k, v, module.decay_logits)
    for got, ref in zip(_grads(out, params), _grads(expected, params), strict=True):
        assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_linear_attention_dispatch_and_errors():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    case = make_case(q, k, v, op="linear")
    assert dispatch.explain(case).chosen == "kernel"
    assert set(dispatch.backends("linear")) == {"reference", "chunked", "kernel"}
    module = LinearAttention().build(num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="Causal and KeyPadding"):
        module(q, k, v, mask=SlidingWindow(3))
    with pytest.raises(ValueError, match="score mods"):
        module(q, k, v, score_mod=ALiBi(2))
    with pytest.raises(ValueError, match="cannot run"):
        module(q[:, :, :3], k, v, backend="kernel")
    with pytest.raises(ValueError, match="causal=True"):
        LinearAttention(causal=False, decay=True)


# --- sinks -----------------------------------------------------------------------------------------


def sinks_reference(q, k, v, module, *, mask=None, score_mod=None):
    """Softmax over [sink logits, real logits]; mods and masks act on the real keys only."""
    k, v = _expand(k, v, q.shape[1])
    scale = q.shape[-1] ** -0.5
    real, has_key = _masked_scores(q, k, mask=mask, score_mod=score_mod, scale=scale)
    real = torch.where(has_key, real, torch.full_like(real, float("-inf")))
    sink = (q @ module.sink_keys.transpose(-1, -2)) * scale  # (B, H, Lq, S)
    probs = torch.cat((sink, real), dim=-1).softmax(-1)
    s = module.num_sinks
    return probs[..., :s] @ module.sink_values + probs[..., s:] @ v


@pytest.mark.parametrize("mask_name", MASK_CASES)
@pytest.mark.parametrize("mod_name", ["none", "alibi", "bias"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_sinks_match_reference(mask_name, mod_name, backend):
    q, k, v = qkv(2, 4, 2, 6, 6, 8, requires_grad=True)
    mask = make_mask(mask_name, batch=2, heads=4, q_len=6, kv_len=6)
    mod = make_score_mod(mod_name, batch=2, heads=4, q_len=6, kv_len=6)
    module = Sinks(num_sinks=2).build(num_heads=4, head_dim=8)
    with torch.no_grad():
        module.sink_values.normal_()
    params = (q, k, v, module.sink_keys, module.sink_values)
    out = module(q, k, v, mask=mask, score_mod=mod, backend=backend)
    expected = sinks_reference(q, k, v, module, mask=mask, score_mod=mod)
    assert_close(out, expected)
    for got, ref in zip(_grads(out, params), _grads(expected, params), strict=True):
        assert_close(got, ref)


def test_fresh_sinks_only_absorb_attention():
    # Zero sink values: each output row is the plain attention row scaled by a factor in (0, 1).
    q, k, v = qkv(1, 2, 2, 5, 5, 4)
    module = Sinks(num_sinks=1).build(num_heads=2, head_dim=4)
    plain = reference_attention(q, k, v)
    out = module(q, k, v).detach()
    factor = (out * plain).sum(-1, keepdim=True) / plain.pow(2).sum(-1, keepdim=True)
    assert_close(out, factor * plain)
    assert ((factor > 0) & (factor < 1)).all()


# --- MossFormer's gated local + global attention ---------------------------------------------------


def _gated_inputs(batch, length, z_dim, e_dim, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, length, z_dim, generator=g, dtype=torch.float64) for _ in range(4)]
    tensors.append(torch.randn(batch, length, e_dim, generator=g, dtype=torch.float64))
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    length=st.integers(1, 40),
    chunk=st.integers(1, 9),
    causal=st.booleans(),
    padded=st.booleans(),
)
def test_gated_attention_matches_reference(batch, length, chunk, causal, padded):
    inputs = _gated_inputs(batch, length, 4, 3)
    key_valid = torch.rand(batch, length, generator=torch.Generator().manual_seed(1)) > 0.3 if padded else None
    kwargs = dict(chunk_size=chunk, causal=causal, key_valid=key_valid)
    out = gated_local_global_attention(*inputs, **kwargs)
    expected = gated_local_global_attention_reference(*inputs, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)
    for got, ref in zip(_grads(out, inputs), _grads(expected, inputs), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_gated_layer_equals_manual_composition(causal):
    torch.manual_seed(0)
    layer = GatedLocalGlobalAttention(16, chunk_size=4, query_key_dim=8, causal=causal, rotary_dim=4).eval()
    x = torch.randn(2, 11, 16, requires_grad=True)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 8:] = False
    out = layer(x, key_padding_mask=valid)
    v, u, quad_q, lin_q, quad_k, lin_k = layer.project(x)
    attended = gated_local_global_attention_reference(
        quad_q, quad_k, lin_q, lin_k, torch.cat((v, u), -1), chunk_size=4, causal=causal, key_valid=valid
    )
    expected = layer.combine(x, v, u, attended)
    assert_close(out, expected)
    params = (x, *layer.parameters())
    for got, ref in zip(_grads(out, params), _grads(expected, params), strict=True):
        assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_gated_layer_causal_ignores_the_future():
    layer = GatedLocalGlobalAttention(8, chunk_size=3, query_key_dim=8, causal=True).eval()
    x = torch.randn(1, 10, 8)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 4, 8)
    assert_close(layer(changed)[:, :6], layer(x)[:, :6])
    assert not torch.allclose(layer(changed)[:, 6:], layer(x)[:, 6:])


def test_gated_layer_matches_mossformer_shapes():
    layer = GatedLocalGlobalAttention(32, chunk_size=8, query_key_dim=16)
    assert layer.to_hidden[1].out_features == 128  # v and u, 2 * dim each
    assert layer.to_out[1].in_features == 64
    assert layer(torch.randn(2, 19, 32)).shape == (2, 19, 32)


# --- through the Attention module ------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        Softmax(),
        Differential(layer_index=1),
        Sparsemax(),
        Entmax15(),
        LinearAttention(),
        LinearAttention(decay=True),
        Sinks(num_sinks=2),
    ],
)
def test_attention_module_runs_every_variant(variant):
    layer = Attention(32, 4, num_kv_heads=2, variant=variant)
    x = torch.randn(2, 7, 32, requires_grad=True)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[0, 5:] = False
    out = layer(x, mask=Causal(), key_padding_mask=valid)
    assert out.shape == (2, 7, 32)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("causal", "decay"), [(True, False), (False, False), (True, True)])
def test_linear_attention_kernel_on_gpu(causal, decay):
    q, k, v = qkv(2, 4, 2, 300, 300, 64, requires_grad=True, device="cuda")
    module = LinearAttention(causal=causal, decay=decay).build(num_heads=4, head_dim=64).cuda()
    out = module(q, k, v)
    logits = module.decay_logits if decay else None
    expected = linear_reference(
        q, k, v, causal=causal, feature_map="elu", normalize=True, decay_logits=logits
    ).float()
    assert_close(out, expected, atol=1e-4, rtol=1e-3)
    for got, ref in zip(_grads(out, (q, k, v)), _grads(expected, (q, k, v)), strict=True):
        assert_close(got, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@gpu
def test_gated_attention_on_gpu():
    inputs = _gated_inputs(2, 700, 32, 48, dtype=torch.float32, device="cuda")
    for causal in (True, False):
        out = gated_local_global_attention(*inputs, chunk_size=256, causal=causal)
        expected = gated_local_global_attention_reference(*inputs, chunk_size=256, causal=causal)
        scale = expected.abs().max().item()
        assert_close(out, expected, atol=1e-5 * scale, rtol=1e-4)
        for got, ref in zip(_grads(out, inputs), _grads(expected, inputs), strict=True):
            assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_attention_module_lets_differential_scale_by_its_half_width():
    """Diff Transformer scales each half-width map by (D/2)^-0.5, also inside the Attention module."""
    from shared_attention import Attention
    from shared_attention.variants import Differential

    torch.manual_seed(0)
    layer = Attention(32, 2, variant=Differential(layer_index=1))
    x = torch.randn(1, 5, 32)
    q = layer.q_proj(x).view(1, 5, 2, 16).transpose(1, 2)
    k, v = layer.kv_proj(x).view(1, 5, 2, 2, 16).permute(2, 0, 3, 1, 4)
    expected = layer.variant(q, k, v, scale=8 ** -0.5)
    expected = layer.out_proj(expected.transpose(1, 2).reshape(1, 5, 32))
    torch.testing.assert_close(layer(x), expected)
