"""The panformer::causal_linear_attention op: chunked form and Triton kernel against the naive
materialised form, values and gradients; opcheck of the op's registrations."""

from __future__ import annotations

import pytest
import torch
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
    assert torch.autograd.gradgradcheck(causal_linear_attention, (q, k, v))


def test_opcheck_cpu():
    for reverse in (False, True):
        q, k, v = _inputs((2, 3), 70, 8, 5, dtype=torch.float32, requires_grad=True)
        torch.library.opcheck(
            torch.ops.panformer.causal_linear_attention.default, (q, k, v, reverse)
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
            compiled_chunked_causal_linear_attention(q, k, v, reverse=reverse),
            chunked_causal_linear_attention(q, k, v, reverse=reverse),
            atol=1e-4,
            rtol=1e-4,
        )


# --- GPU: the Triton kernel ------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("length", [1, 63, 64, 200, 1000])
@pytest.mark.parametrize(("dim_k", "dim_v"), [(16, 16), (64, 32), (128, 128), (20, 100)])
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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_values_and_gradients(dtype):
    q, k, v = _inputs((2, 4), 777, 64, 64, dtype=torch.float32, device="cuda")
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
    torch.library.opcheck(torch.ops.panformer.causal_linear_attention.default, (q, k, v, False))
