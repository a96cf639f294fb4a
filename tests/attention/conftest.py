"""Shared helpers for the attention tests: random tensors, fp32 comparison against the oracle, and the bf16
rule (error against fp32 at most twice that of plain bf16 attention)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared_attention.backends.reference import reference_attention

# fp32 tolerances: backends differ from the oracle only by summation order.
ATOL = 2e-5
RTOL = 1e-4


def randn(
    *shape: int, requires_grad: bool = False, device: str = "cpu", seed: int | None = None
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    t = torch.randn(*shape, generator=generator).to(device)
    return t.requires_grad_(requires_grad)


def qkv(
    batch: int,
    heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    *,
    requires_grad=False,
    device="cpu",
    seed=0,
):
    """q (B, H, Lq, D), k and v (B, Hkv, Lk, D), reproducible from ``seed``."""
    return (
        randn(batch, heads, q_len, head_dim, requires_grad=requires_grad, device=device, seed=seed),
        randn(
            batch,
            kv_heads,
            kv_len,
            head_dim,
            requires_grad=requires_grad,
            device=device,
            seed=seed + 1,
        ),
        randn(
            batch,
            kv_heads,
            kv_len,
            head_dim,
            requires_grad=requires_grad,
            device=device,
            seed=seed + 2,
        ),
    )


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float = ATOL, rtol: float = RTOL
) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def low_precision_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask) -> torch.Tensor:
    """Masked attention at the inputs' own precision, as a bf16/fp16 kernel computes it: matrix products of
    bf16 operands (fp32 accumulation), softmax in fp32, probabilities rounded to the input dtype before they
    weight the values. The yardstick of what that precision can achieve (see `assert_as_accurate_as`)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    allowed = mask.dense(q.shape[2], k.shape[2], device=q.device)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1).nan_to_num()
    return probs.to(q.dtype) @ v


def assert_as_accurate_as(actual: torch.Tensor, baseline: torch.Tensor, exact: torch.Tensor, *,
                          name: str = "", factor: float = 2.0, floor: float = 1e-3) -> None:
    """A low-precision result is right when its largest error against the fp32 result is at most `factor`
    times that of the same computation done plainly at that precision (FlashAttention's test rule): a fixed
    tolerance either passes rounding-free bugs at small sizes or fails honest rounding at large ones."""
    error = (actual.float() - exact.float()).abs().max().item()
    allowed = factor * (baseline.float() - exact.float()).abs().max().item() + floor
    assert error <= allowed, f"{name}: max error {error:.4g} vs fp32, allowed {allowed:.4g} ({factor}x plain low precision)"


def assert_low_precision_matches(
    actual: torch.Tensor, grads: list[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask
) -> None:
    """A bf16/fp16 kernel's output and q/k/v gradients (from `values_and_grads`) against the fp32 reference,
    allowed twice the error of `low_precision_attention` on the same inputs (and gradient weights)."""
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    exact, exact_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), *leaves)
    low = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    baseline, baseline_grads = values_and_grads(lambda *t: low_precision_attention(*t, mask=mask), *low)
    assert_as_accurate_as(actual, baseline, exact, name="output")
    for name, a, b, e in zip("qkv", grads, baseline_grads, exact_grads, strict=True):
        assert_as_accurate_as(a, b, e, name=f"d{name}")


def run_in_interpreter(module: str, *, expected_ok: int, timeout: int = 120) -> None:
    """Run a test module's ``__main__`` block (its Triton kernels against the oracle, printing "ok ..."
    per case) in a fresh process with TRITON_INTERPRET=1. Triton reads the variable when kernels are
    decorated, and Inductor (torch.compile, used by other tests of the session) leaves Triton unable to
    interpret afterwards: so a new process, with the variable set from the start, runs them on CPU."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("ok ") == expected_ok, result.stdout


def values_and_grads(fn, q, k, v, *, seed: int = 7):
    """Output of fn(q, k, v) and the gradients of a fixed random projection of it."""
    out = fn(q, k, v)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v), allow_unused=True)
    return out.detach(), [
        g if g is not None else torch.zeros_like(t) for g, t in zip(grads, (q, k, v), strict=True)
    ]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
