"""The panformer::neighborhood_attention op: the Triton kernels (run by Triton's interpreter on CPU,
TRITON_INTERPRET=1) and the op's CPU path against the core's reference oracle with a ``Neighborhood``
mask, values and gradients in fp32; dispatch routing on CUDA."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest
import torch

from panformer_kernels.neighborhood_attention import as_three_axes, neighborhood_attention
from shared_attention import KeyPadding, Neighborhood, attention
from shared_attention.backends.reference import reference_attention
from shared_attention.dispatch import explain
from shared_attention.functional import make_case

from .conftest import (
    assert_close,
    assert_low_precision_matches,
    qkv,
    run_in_interpreter,
    values_and_grads,
)
from .hopper import compile_neighborhood_kernels_for_hopper

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (grid, kernel size, dilation, causal, heads, kv heads): square and ragged grids (not whole tiles),
# dilation, grouped-query heads, 1-D and 3-D grids, causal axes, even kernel sizes.
CASES = [
    ((8, 8), 3, 1, False, 2, 2),
    ((8, 8), 5, 2, False, 2, 1),
    ((6, 7), (3, 5), (1, 2), False, 2, 1),
    ((40,), 7, 2, False, 2, 1),  # 1-D
    ((7, 9), (4, 2), 1, False, 2, 2),  # even kernel sizes: windows reach further on one side
    ((7, 6), (3, 3), (1, 2), (True, False), 2, 1),  # causal rows (e.g. time) with dilated columns
    ((5, 4, 6), (3, 2, 3), (1, 1, 2), (True, False, False), 2, 1),  # 3-D, causal in time
    ((4, 5, 3), 3, 1, False, 1, 1),  # 3-D, ragged against 4 x 4 x 4 tiles
]
# Strided windows (GNA), with the stride appended: runs cut by the border, even strides, causal axes.
STRIDED_CASES = [
    ((9, 11), (3, 5), (1, 2), False, 2, 1, (2, 4)),
    ((7, 10), (4, 3), 1, (True, False), 2, 2, (3, 3)),  # causal rows; stride == kernel: blocked columns
    ((37,), 6, 2, False, 2, 1, 5),  # 1-D
    ((50,), 8, 1, False, 2, 1, 8),  # 1-D blocked windows over several tiles: each key block's queries exactly
    ((45,), 9, 1, False, 2, 2, 4),  # odd kernel, even stride: runs whose leader is off-centre
    ((5, 6, 7), (3, 3, 4), (1, 2, 1), (True, False, False), 2, 1, (2, 1, 4)),  # 3-D, causal in time
]


def check_triton_kernels(grid, kernel_size, dilation, causal, heads, kv_heads, stride=1) -> None:
    """The Triton forward and backward (small tiles and blocks of other shapes than the tiles; q and v
    given as transposed views, as a model's projections make them) against the oracle; raises on mismatch."""
    from panformer_kernels.triton_neighborhood_attention import (
        neighborhood_backward,
        neighborhood_forward,
    )

    length = math.prod(grid)
    q, k, v = qkv(1, heads, kv_heads, length, length, 16, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation, causal, stride)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)

    grid3, kernel3, dilation3, causal3, stride3 = as_three_axes(grid, kernel_size, dilation, causal, stride)
    config = {1: dict(tile=(1, 1, 16), block=(1, 1, 16)), 2: dict(tile=(1, 4, 4), block=(1, 2, 8)),
              3: dict(tile=(2, 2, 4), block=(4, 2, 2))}[len(grid)] | dict(num_warps=4, num_stages=1)
    options = dict(grid=tuple(grid3), kernel_size=tuple(kernel3), dilation=tuple(dilation3), causal=tuple(causal3),
                   stride=tuple(stride3), scale=16**-0.5, config=config)
    strided = lambda t: t.detach().transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731  (B, L, H, D) memory
    out, lse = neighborhood_forward(strided(q), k.detach(), strided(v), **options)
    assert_close(out, expected)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))  # as values_and_grads
    grads = neighborhood_backward(weight, q.detach(), k.detach(), v.detach(), out, lse, **options)
    for actual, wanted in zip(grads, expected_grads, strict=True):
        assert_close(actual, wanted)
    if stride != 1:  # a gradient reaching the log-sum-exp too (merging attentions sends one)
        ref_out, ref_lse = reference_attention(q, k, v, mask=mask, return_lse=True)
        assert_close(lse, ref_lse.detach())
        lse_weight = torch.randn(lse.shape, generator=torch.Generator().manual_seed(8))
        wanted = torch.autograd.grad((ref_out * weight).sum() + (ref_lse * lse_weight).sum(), (q, k, v))
        grads = neighborhood_backward(weight, q.detach(), k.detach(), v.detach(), out, lse, **options,
                                      grad_lse=lse_weight)
        for actual, expected_grad in zip(grads, wanted, strict=True):
            assert_close(actual, expected_grad)


def test_triton_kernels_match_the_oracle_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(CASES) + len(STRIDED_CASES), timeout=300)


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the three kernels to a cubin for sm_90 (bf16, 8 x 8 tiles, causal rows, D=64): what the
    interpreter cannot check (types, layouts, loops with run-time bounds) compiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    from panformer_kernels import triton_neighborhood_attention as kernels

    meta = {"TILE_T": 1, "TILE_H": 8, "TILE_W": 8, "BLOCK_T": 1, "BLOCK_H": 8, "BLOCK_W": 8, "BLOCK_D": 64,
            "PRECISION": "tf32", "CAUSAL_T": False, "CAUSAL_H": True, "CAUSAL_W": False, "THREE_D": False}
    compile_neighborhood_kernels_for_hopper(kernels, meta)


@pytest.mark.parametrize(
    ("grid", "kernel_size", "dilation", "causal", "heads", "kv_heads", "stride"),
    [(*case, 1) for case in CASES] + STRIDED_CASES,
)
def test_op_cpu_path_matches_the_oracle(grid, kernel_size, dilation, causal, heads, kv_heads, stride):
    length = math.prod(grid)
    q, k, v = qkv(2, heads, kv_heads, length, length, 8, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation, causal, stride)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    actual, grads = values_and_grads(
        lambda *t: neighborhood_attention(
            *t, grid=grid, kernel_size=kernel_size, dilation=dilation, causal=causal, stride=stride
        ),
        q, k, v,
    )
    assert_close(actual, expected)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b)


def test_op_registrations_pass_opcheck():
    q, k, v = qkv(1, 2, 1, 20, 20, 8, requires_grad=True)
    torch.library.opcheck(
        torch.ops.panformer.neighborhood_attention.default,
        (q, k, v, [1, 4, 5], [1, 3, 3], [1, 1, 2], [False, True, False], [1, 2, 3], 0.3),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_dispatch_prefers_the_kernel_on_cuda_only():
    q, k, v = qkv(1, 2, 2, 64, 64, 16)
    mask = Neighborhood((8, 8), 3)
    case = make_case(q, k, v, mask=mask)
    on_cuda = explain(replace(case, device_type="cuda"))
    assert on_cuda.chosen == "neighborhood"
    assert explain(case).chosen == "sdpa"  # CPU: the op would run the reference math
    padded = mask & KeyPadding(valid=torch.ones(1, 64, dtype=torch.bool))
    why = explain(replace(make_case(q, k, v, mask=padded), device_type="cuda"))
    assert why.chosen != "neighborhood" and "only a Neighborhood" in why.rejected["neighborhood"]
    one_d = Neighborhood((64,), 5, 3)
    three_d = Neighborhood((4, 4, 4), 3, causal=(True, False, False))
    for m in (one_d, three_d):
        assert explain(replace(make_case(q, k, v, mask=m), device_type="cuda")).chosen == "neighborhood"
    # In training a long 1-D band goes to Flex (its backward measured faster); 2-D/3-D stay on the kernel.
    for m in (mask, three_d):
        assert explain(replace(make_case(q, k, v, mask=m), device_type="cuda", training=True)).chosen == "neighborhood"
    long_q, long_k, long_v = qkv(1, 2, 2, 4096, 4096, 16)
    band = make_case(long_q, long_k, long_v, mask=Neighborhood((4096,), 127))
    assert explain(replace(band, device_type="cuda")).chosen == "neighborhood"
    assert explain(replace(band, device_type="cuda", training=True)).chosen == "flex"
    # By name on CPU: the op's reference path, through the core's attention(), 1-D to 3-D.
    q, k, v = qkv(1, 2, 1, 64, 64, 16, requires_grad=True)
    for m in (mask, one_d, three_d):
        expected, expected_grads = values_and_grads(lambda *t, m=m: reference_attention(*t, mask=m), q, k, v)
        actual, grads = values_and_grads(lambda *t, m=m: attention(*t, mask=m, backend="neighborhood"), q, k, v)
        assert_close(actual, expected)
        for a, b in zip(grads, expected_grads, strict=True):
            assert_close(a, b)


def test_the_bf16_yardstick_passes_rounding_and_fails_a_wrong_gradient():
    # The GPU tests' bf16 rule on CPU: the fp32 reference rounded to bf16 passes; one dq entry off by 0.2 fails.
    mask = Neighborhood((16, 16), 7)
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in qkv(1, 2, 1, 256, 256, 64))
    actual, grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    assert_low_precision_matches(actual, grads, q, k, v, mask)
    grads[0] = grads[0].clone()
    grads[0][0, 1, 37, 5] += 0.2
    with pytest.raises(AssertionError, match="dq: max error"):
        assert_low_precision_matches(actual, grads, q, k, v, mask)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "mask",
    [
        Neighborhood((24, 20), 7, (1, 2)),  # 480 tokens, ragged against (8, 8) tiles
        Neighborhood((6, 10, 8), (3, 5, 5), (1, 1, 2), causal=(True, False, False)),  # 3-D, causal time
        Neighborhood((16, 12), 5, stride=(1, 2), additional_keys=4),  # strided windows + 4 registers, merged
    ],
    ids=["2d-dilated", "3d-causal", "2d-strided-registers"],
)
def test_cuda_kernel_matches_the_oracle(dtype, mask):
    length = math.prod(mask.grid)
    q, k, v = (t.to(dtype) for t in qkv(2, 4, 2, length, length + mask.additional_keys, 64, device="cuda"))
    for t in (q, k, v):
        t.requires_grad_(True)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    actual, grads = values_and_grads(lambda *t: attention(*t, mask=mask, backend="neighborhood"), q, k, v)
    if dtype == torch.bfloat16:  # against fp32, as accurate as plain bf16 attention
        assert_low_precision_matches(actual, grads, q, k, v, mask)
        return
    assert_close(actual, expected, atol=1e-4, rtol=1e-3)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b, atol=1e-4, rtol=1e-3)


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in CASES + STRIDED_CASES:
        check_triton_kernels(*case)
        print("ok", case, flush=True)
