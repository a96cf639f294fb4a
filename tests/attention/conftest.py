"""Shared helpers for the attention tests: random tensors and fp32 comparison against the oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
