"""The panformer::differential_attention op: the Triton kernels (run by Triton's interpreter on CPU,
TRITON_INTERPRET=1) and the op's CPU path against a plain-torch oracle, values and gradients (q, k, v
and lam) in fp32; the op under the variant module's math against ``DifferentialAttention``; bf16 and
fp32 on CUDA."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from panformer_kernels.differential_attention import differential_attention, fused_kernel_supports
from shared_attention.masks import Causal
from shared_attention.variants.differential import DifferentialAttention

from .conftest import assert_close, run_in_interpreter

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (L, D, causal, growing) for the interpreted kernels: lengths 1, 17, 70, not multiples of the
# (16, 32) blocks the interpreter runs with, D = 16 and 32 (q/k halves of 8 and 16, values of width
# D); then keys whose scores grow along the sequence, so that the running max moves in later blocks.
KERNEL_CASES = [
    *[(length, dim, causal, False) for length in (1, 17, 70) for dim in (16, 32) for causal in (False, True)],
    (70, 16, True, True),
    (70, 32, False, True),
]


def oracle(q, k, v, lam, *, causal: bool):
    """softmax(q1 k1^T s) v - lam softmax(q2 k2^T s) v with materialised softmaxes, s = (D/2)^-0.5."""
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)

    def probs(qa, ka):
        scores = (qa @ ka.transpose(-2, -1)) * qa.shape[-1] ** -0.5
        if causal:
            length = qa.shape[-2]
            future = torch.ones(length, length, dtype=torch.bool, device=qa.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return scores.softmax(-1)

    return probs(q1, k1) @ v - lam * (probs(q2, k2) @ v)


def inputs(length: int, dim: int, *, batch=2, heads=2, device="cpu", dtype=torch.float32, seed=0):
    """q, k, v (B, H, L, D) and lam, all requiring grad, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3))
    lam = torch.tensor(0.6)
    return [t.to(device=device, dtype=dtype if t.dim() else torch.float32).requires_grad_() for t in (q, k, v, lam)]


def values_and_grads(fn, tensors, *, seed=7):
    out = fn(*tensors)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return out.detach(), torch.autograd.grad((out * weight).sum(), tensors)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def fused(q, k, v, lam, *, causal: bool):
    q1, q2 = q.chunk(2, -1)  # views: the op reads them through their strides
    k1, k2 = k.chunk(2, -1)
    return differential_attention(q1, q2, k1, k2, v, lam, causal=causal)


def check_triton_kernels(length: int, dim: int, causal: bool, growing: bool) -> None:
    """The Triton forward and backward (small blocks, so several blocks and ragged tails) against
    the oracle; raises on mismatch."""
    from panformer_kernels.triton_differential_attention import (
        differential_backward,
        differential_forward,
    )

    q, k, v, lam = inputs(length, dim)
    if growing:  # scores up to ~30x larger at the end of the sequence
        with torch.no_grad():
            k.mul_(torch.linspace(1, 30, length)[:, None])
    expected, expected_grads = values_and_grads(lambda *t: oracle(*t, causal=causal), (q, k, v, lam))
    q1, q2 = q.detach().chunk(2, -1)
    k1, k2 = k.detach().chunk(2, -1)
    options = dict(causal=causal, scale=(dim // 2) ** -0.5)
    out, out2, lse = differential_forward(q1, q2, k1, k2, v.detach(), lam.detach(), block_m=32, block_n=16, **options)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))  # as values_and_grads
    dq1, dq2, dk1, dk2, dv, dlam = differential_backward(
        weight, q1, q2, k1, k2, v.detach(), lam.detach(), out, out2, lse,
        block_m1=16, block_n1=32, block_m2=32, block_n2=16, **options,
    )
    grads = (torch.cat((dq1, dq2), -1), torch.cat((dk1, dk2), -1), dv, dlam)
    tolerance = dict(atol=1e-4, rtol=1e-3) if growing else dict(atol=5e-5, rtol=2e-4)
    assert_close(out, expected, **(tolerance if growing else {}))
    for actual, wanted in zip(grads, expected_grads, strict=True):
        assert_close(actual, wanted, **tolerance)


def test_triton_kernels_match_the_oracle_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(KERNEL_CASES))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("length", "dim"), [(1, 16), (7, 16), (70, 32)])
def test_op_cpu_path_matches_the_oracle(length, dim, causal):
    tensors = inputs(length, dim)
    expected, expected_grads = values_and_grads(lambda *t: oracle(*t, causal=causal), tensors)
    actual, grads = values_and_grads(lambda *t: fused(*t, causal=causal), tensors)
    assert_close(actual, expected)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b, atol=5e-5, rtol=2e-4)


def test_op_registrations_pass_opcheck():
    q, k, v, lam = inputs(9, 16)
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    torch.library.opcheck(
        torch.ops.panformer.differential_attention.default, (q1, q2, k1, k2, v, lam, True, 0.3),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_op_rejects_mismatched_shapes_and_a_non_scalar_lambda():
    q, k, v, lam = inputs(5, 16)
    q1, q2 = q.chunk(2, -1)
    k1, _ = k.chunk(2, -1)
    with pytest.raises(ValueError, match="q1, q2, k1, k2"):
        differential_attention(q1, q2, k1, k[..., :4], v, lam)
    with pytest.raises(ValueError, match="scalar"):
        differential_attention(q1, q2, k1, k1, v, torch.ones(2))


def test_fused_kernel_is_not_claimed_off_cuda():
    q, k, v, _ = inputs(8, 16)
    assert not fused_kernel_supports(q, k, v)


def module_on_the_op(module: DifferentialAttention, q, k, v, *, causal: bool):
    """The wiring proposed for ``DifferentialAttention.forward``: the op, then the per-head norm."""
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    out = differential_attention(q1, q2, k1, k2, v, module.lambda_full(), causal=causal)
    out = F.rms_norm(out, (out.shape[-1],), module.norm_weight, module.eps)
    return out * (1 - module.lambda_init)


@pytest.mark.parametrize("causal", [False, True])
def test_op_reproduces_the_variant_module_and_its_lambda_gradients(causal):
    torch.manual_seed(0)
    module = DifferentialAttention(head_dim=16, lambda_init=0.5)
    q, k, v, _ = inputs(11, 16)
    params = (q, k, v, *module.parameters())
    expected = module(q, k, v, mask=Causal() if causal else None, backend="reference")
    actual = module_on_the_op(module, q, k, v, causal=causal)
    weight = torch.randn(expected.shape)
    assert_close(actual, expected, atol=5e-5, rtol=2e-4)
    got = torch.autograd.grad((actual * weight).sum(), params)
    want = torch.autograd.grad((expected * weight).sum(), params)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, atol=5e-5, rtol=2e-4)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_kernels_bf16_match_the_oracle(causal):
    """bf16 at L=1024, D=128 (the issue's head size): the fused op against the fp32 oracle on the
    same (bf16-rounded) inputs, within the error of two bf16 SDPA calls plus a margin."""
    tensors = inputs(1024, 128, batch=2, heads=4, device="cuda", dtype=torch.bfloat16)
    wide = [t.detach().float().requires_grad_() for t in tensors]
    expected, expected_grads = values_and_grads(lambda *t: oracle(*t, causal=causal), wide)
    actual, grads = values_and_grads(lambda *t: fused(*t, causal=causal), tensors)
    assert actual.dtype == torch.bfloat16
    q, k, v, _ = tensors
    assert fused_kernel_supports(q, k, v)
    assert not fused_kernel_supports(q, k[:, :2], v[:, :2])  # grouped-query heads: the reference math
    assert not fused_kernel_supports(q, k, torch.cat((v, v), -1))  # values wider than 128
    assert _relative_error(actual, expected) < 2e-2
    for name, a, b in zip(("q", "k", "v", "lam"), grads, expected_grads, strict=True):
        assert _relative_error(a, b) < 3e-2, name


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_kernels_fp32_match_the_oracle(causal):
    """fp32 (ieee dots) at a length that is no multiple of the default blocks, D=64."""
    tensors = inputs(300, 64, batch=1, heads=3, device="cuda")
    expected, expected_grads = values_and_grads(lambda *t: oracle(*t, causal=causal), tensors)
    actual, grads = values_and_grads(lambda *t: fused(*t, causal=causal), tensors)
    assert_close(actual, expected, atol=1e-4, rtol=1e-3)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b, atol=1e-3, rtol=1e-3)


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in KERNEL_CASES:
        check_triton_kernels(*case)
        print("ok", case, flush=True)
