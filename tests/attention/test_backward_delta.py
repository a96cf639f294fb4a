"""The fused row term of attention backwards (panformer_kernels.triton_backward_delta) against torch,
run by Triton's interpreter on CPU (TRITON_INTERPRET=1) in its own process."""

from __future__ import annotations

import os

import pytest
import torch

from .conftest import assert_close, run_in_interpreter

CASES = [  # (leading shape, L, D, with an lse gradient)
    ((2, 3), 37, 16, False),  # rows not a multiple of the block
    ((1, 2), 50, 12, True),  # D not a power of 2, lse gradient
    ((1, 1), 5, 128, True),  # fewer rows than one block
]


def check_backward_delta(lead: tuple[int, ...], length: int, dim: int, with_lse: bool) -> None:
    from panformer_kernels.triton_backward_delta import backward_delta

    g = torch.Generator().manual_seed(length)
    grad_out, out = (torch.randn(*lead, length, dim, generator=g) for _ in range(2))
    grad_lse = torch.randn(*lead, length, generator=g) if with_lse else None
    expected = (grad_out * out).sum(-1) - (grad_lse if with_lse else 0.0)
    actual = backward_delta(grad_out.transpose(-1, -2).contiguous().transpose(-1, -2), out, grad_lse)  # strided dO
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_backward_delta_matches_torch_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(CASES), timeout=120)


def test_backward_delta_refuses_mismatched_shapes():
    from panformer_kernels.triton_backward_delta import backward_delta

    with pytest.raises(ValueError, match="must match"):
        backward_delta(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5))


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    for case in CASES:
        check_backward_delta(*case)
        print("ok", case, flush=True)
