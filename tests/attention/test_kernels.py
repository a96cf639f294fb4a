"""The panformer::causal_linear_attention op: chunked form and Triton kernel against the naive
materialised form, values and gradients; opcheck of the op's registrations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from panformer_kernels import (
    causal_linear_attention,
    chunked_causal_linear_attention,
    naive_causal_linear_attention,
)
from panformer_kernels.linear_attention import compiled_chunked_causal_linear_attention

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(
    lead, length, dim_k, dim_v, *, dtype=torch.float64, device="cpu", seed=0, requires_grad=False
):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, length, dim_k, generator=g, dtype=torch.float64)
    k = torch.randn(*lead, length, dim_k, generator=g, dtype=torch.float64)
    v = torch.randn(*lead, length, dim_v, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v)]


def _grads(fn, q, k, v, *, seed=1):
    out = fn(q, k, v)
    weight = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    weight = weight.to(device=out.device, dtype=out.dtype)
    return out.detach(), torch.autograd.grad((out * weight).sum(), (q, k, v))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    length=st.integers(1, 70),
    dim_k=st.integers(1, 9),
    dim_v=st.integers(1, 9),
    chunk=st.sampled_from([1, 4, 16, 64]),
    reverse=st.booleans(),
)
def test_chunked_form_equals_naive(batch, heads, length, dim_k, dim_v, chunk, reverse):
    q, k, v = _inputs((batch, heads), length, dim_k, dim_v)
    expected = naive_causal_linear_attention(q, k, v, reverse=reverse)
    actual = chunked_causal_linear_attention(q, k, v, reverse=reverse, chunk_size=chunk)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    length=st.integers(1, 80),
    dim_k=st.integers(1, 8),
    dim_v=st.integers(1, 8),
    reverse=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_op_values_and_gradients_match_naive(length, dim_k, dim_v, reverse, dtype):
    q, k, v = _inputs((2, 2), length, dim_k, dim_v, dtype=dtype, requires_grad=True)
    out, grads = _grads(lambda a, b, c: causal_linear_attention(a, b, c, reverse=reverse), q, k, v)
    ref_out, ref_grads = _grads(
        lambda a, b, c: naive_causal_linear_attention(a, b, c, reverse=reverse), q, k, v
    )
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, ref_out, **tol)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, **tol)


def test_op_gradcheck_float64():
    q, k, v = _inputs((1, 2), 9, 3, 4, requires_grad=True)
    assert torch.autograd.gradcheck(causal_linear_attention, (q, k, v))
    # The backward is the op again, so second derivatives work too.
    q, k, v = _inputs((1, 1), 4, 2, 2, requires_grad=True)
    assert torch.autograd.gradgradcheck(causal_linear_attention, (q, k, v))


def _cum_log_decay(lead, length, *, dtype=torch.float64, device="cpu", seed=5, requires_grad=False):
    """Per-step log decays log g_t = logsigmoid(gate) <= 0 (decays mostly near 0.9)."""
    gate = torch.randn(*lead, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.logsigmoid(gate + 2).to(device=device, dtype=dtype).requires_grad_(requires_grad)


def test_opcheck_cpu():
    op = torch.ops.panformer.causal_linear_attention.default
    for reverse in (False, True):
        q, k, v = _inputs((2, 3), 70, 8, 5, dtype=torch.float32, requires_grad=True)
        cum = _cum_log_decay((2, 3), 70, dtype=torch.float32).cumsum(-1).detach().requires_grad_()
        for decay in (None, cum):
            torch.library.opcheck(op, (q, k, v, decay, reverse))


@settings(max_examples=20, deadline=None)
@given(
    length=st.integers(1, 70),
    dim_k=st.integers(1, 6),
    dim_v=st.integers(1, 6),
    chunk=st.sampled_from([1, 8, 64]),
    reverse=st.booleans(),
)
def test_decay_chunked_form_equals_naive(length, dim_k, dim_v, chunk, reverse):
    q, k, v = _inputs((2, 2), length, dim_k, dim_v)
    cum = _cum_log_decay((2, 2), length).cumsum(-1)
    expected = naive_causal_linear_attention(q, k, v, cum_log_decay=cum, reverse=reverse)
    actual = chunked_causal_linear_attention(q, k, v, cum_log_decay=cum, reverse=reverse, chunk_size=chunk)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)


def test_decay_matches_the_recurrence_and_gradcheck():
    q, k, v = _inputs((1, 2), 12, 3, 2, requires_grad=True)
    log_decay = _cum_log_decay((1, 2), 12, requires_grad=True)
    # S_t = g_t S_{t-1} + k_t v_t^T, o_t = q_t S_t, step by step.
    state, outs = torch.zeros(1, 2, 3, 2, dtype=torch.float64), []
    for t in range(12):
        state = log_decay[..., t, None, None].exp() * state + k[..., t, :, None] * v[..., t, None, :]
        outs.append((q[..., t, :, None] * state).sum(-2))
    torch.testing.assert_close(causal_linear_attention(q, k, v, log_decay=log_decay), torch.stack(outs, -2))
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d, r=reverse: causal_linear_attention(a, b, c, log_decay=d, reverse=r),
            (q, k, v, log_decay),
        )


def test_op_traces_under_torch_compile():
    q, k, v = _inputs((1, 2), 33, 4, 4, dtype=torch.float32)
    compiled = torch.compile(causal_linear_attention, backend="eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(q, k, v), naive_causal_linear_attention(q, k, v), atol=1e-5, rtol=1e-5
    )


def test_op_rejects_mismatched_shapes():
    q, k, v = _inputs((1, 2), 8, 4, 4)
    with pytest.raises(ValueError, match="q, k"):
        causal_linear_attention(q, k[..., :3], v)


@pytest.mark.slow
def test_compiled_chunked_form_equals_eager():
    q, k, v = _inputs((2, 2), 300, 16, 8, dtype=torch.float32)
    for reverse in (False, True):
        torch.testing.assert_close(
            compiled_chunked_causal_linear_attention()(q, k, v, reverse=reverse),
            chunked_causal_linear_attention(q, k, v, reverse=reverse),
            atol=1e-4,
            rtol=1e-4,
        )


# --- GPU: the Triton kernel ------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("length", [1, 200, 1000])
# (160, 48): keys wider than one 128 tile, so partial outputs are summed.
@pytest.mark.parametrize(("dim_k", "dim_v"), [(16, 16), (128, 128), (20, 100), (160, 48)])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_fp32_values_and_gradients(length, dim_k, dim_v, reverse):
    q, k, v = _inputs(
        (2, 3), length, dim_k, dim_v, dtype=torch.float32, device="cuda", requires_grad=True
    )
    out, grads = _grads(lambda a, b, c: causal_linear_attention(a, b, c, reverse=reverse), q, k, v)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_grads = _grads(
        lambda a, b, c: naive_causal_linear_attention(a, b, c, reverse=reverse), qd, kd, vd
    )
    # Sums of up to L * D products of unit normals: compare relative to the output's scale.
    scale = ref_out.abs().max().item() + 1
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5 * scale, rtol=1e-4)
    for g, ref in zip(grads, ref_grads, strict=True):
        gscale = ref.abs().max().item() + 1
        torch.testing.assert_close(g.double(), ref, atol=1e-5 * gscale, rtol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("length", [1, 200, 1000])
@pytest.mark.parametrize(("dim_k", "dim_v"), [(64, 32), (160, 48)])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_decay_fp32_values_and_gradients(length, dim_k, dim_v, reverse):
    q, k, v = _inputs((2, 3), length, dim_k, dim_v, dtype=torch.float32, device="cuda", requires_grad=True)
    log_decay = _cum_log_decay((2, 3), length, dtype=torch.float32, device="cuda", requires_grad=True)
    inputs = (q, k, v, log_decay)

    def op(a, b, c, d):
        return causal_linear_attention(a, b, c, log_decay=d, reverse=reverse)

    def naive(a, b, c, d):
        return naive_causal_linear_attention(a, b, c, cum_log_decay=d.cumsum(-1), reverse=reverse)

    out = op(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    doubles = [t.detach().double().requires_grad_() for t in inputs]
    ref_out = naive(*doubles)
    ref_grads = torch.autograd.grad((ref_out * weight.double()).sum(), doubles)
    # The decay's gradient q . dq - k . dk cancels large terms (exactly, at L = 1): its fp32
    # rounding scales with those terms, not with the result.
    terms = (doubles[0] * ref_grads[0]).sum(-1).abs().max().item()
    scales = [ref.abs().max().item() for ref in (ref_out, *ref_grads)]
    scales[-1] = max(scales[-1], terms)
    for got, ref, scale in zip((out, *grads), (ref_out, *ref_grads), scales, strict=True):
        torch.testing.assert_close(got.double(), ref, atol=1e-5 * (scale + 1), rtol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_values_and_gradients(dtype):
    q, k, v = _inputs((2, 4), 777, 128, 128, dtype=torch.float32, device="cuda")
    q, k, v = ((t * 0.3).to(dtype).requires_grad_() for t in (q, k, v))
    out, grads = _grads(causal_linear_attention, q, k, v)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_grads = _grads(naive_causal_linear_attention, qd, kd, vd)
    for got, ref in zip((out, *grads), (ref_out, *ref_grads), strict=True):
        error = (got.double() - ref).norm() / ref.norm()
        assert error < 2e-2, f"relative error {error:.3g} in {dtype}"


@pytest.mark.gpu
@gpu
def test_triton_matches_chunked_form_and_opcheck():
    q, k, v = _inputs((2, 2), 300, 32, 48, dtype=torch.float32, device="cuda", requires_grad=True)
    torch.testing.assert_close(
        causal_linear_attention(q, k, v),
        chunked_causal_linear_attention(q, k, v),
        atol=1e-3,
        rtol=1e-4,
    )
    torch.library.opcheck(torch.ops.panformer.causal_linear_attention.default, (q, k, v, None, False))
    cum = _cum_log_decay((2, 2), 300, dtype=torch.float32, device="cuda").cumsum(-1).requires_grad_()
    torch.library.opcheck(torch.ops.panformer.causal_linear_attention.default, (q, k, v, cum, True))
