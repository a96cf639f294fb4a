"""The panformer::neighborhood_attention_2d op: the Triton kernels (run by Triton's interpreter on CPU,
TRITON_INTERPRET=1) and the op's CPU path against the core's reference oracle with a ``Neighborhood``
mask, values and gradients in fp32; dispatch routing on CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from panformer_kernels.neighborhood_attention import (
    neighborhood_attention_2d,
    triton_neighborhood_attention_2d,
    triton_neighborhood_attention_2d_backward,
)
from shared_attention import KeyPadding, Neighborhood, attention
from shared_attention.backends.reference import reference_attention
from shared_attention.dispatch import explain
from shared_attention.functional import make_case

from .conftest import assert_close, qkv, values_and_grads

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (grid, kernel size, dilation, heads, kv heads): square and ragged grids (not whole tiles),
# dilation, grouped-query heads.
CASES = [
    ((8, 8), 3, 1, 2, 2),
    ((8, 8), 5, 2, 2, 1),
    ((6, 7), (3, 5), (1, 2), 2, 1),
    ((1, 40), (1, 7), (1, 2), 2, 1),  # a 1-D neighbourhood: one row
    ((7, 9), (4, 2), 1, 2, 2),  # even kernel sizes: windows reach further on one side
]


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


def check_triton_kernels(grid, kernel_size, dilation, heads, kv_heads) -> None:
    """The Triton forward and backward (query tiles of 4 x 4 cells and key blocks of 2 x 8, 1 x 16 on one
    row; q and v given as transposed views, as a model's projections make them) against the oracle;
    raises on mismatch."""
    length = grid[0] * grid[1]
    q, k, v = qkv(1, heads, kv_heads, length, length, 16, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)

    one_row = grid[0] == 1
    config = dict(tile=(1, 16) if one_row else (4, 4), block=(1, 16) if one_row else (2, 8), num_warps=4, num_stages=1)
    options = dict(grid=grid, kernel_size=_pair(kernel_size), dilation=_pair(dilation), scale=16**-0.5, config=config)
    strided = lambda t: t.detach().transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731  (B, L, H, D) memory
    out, lse = triton_neighborhood_attention_2d(strided(q), k.detach(), strided(v), **options)
    assert_close(out, expected)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))  # as values_and_grads
    grads = triton_neighborhood_attention_2d_backward(weight, q.detach(), k.detach(), v.detach(), out, lse, **options)
    for actual, wanted in zip(grads, expected_grads, strict=True):
        assert_close(actual, wanted)


def test_triton_kernels_match_the_oracle_in_the_interpreter():
    # Triton reads TRITON_INTERPRET when kernels are decorated, and Inductor (torch.compile, used by
    # other tests in this session) leaves Triton unable to interpret afterwards: a fresh process
    # with the variable set from the start runs the kernels on CPU.
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", __name__], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("ok ") == len(CASES), result.stdout


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the three kernels to a cubin for sm_90 (bf16, 8 x 8 tiles, D=64): what the
    interpreter cannot check (types, layouts, loops with run-time bounds) compiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from panformer_kernels import triton_neighborhood_attention as kernels

    ints = ("heads", "kv_group", "dim", "length", "n_h", "n_w", "k_h", "k_w", "d_h", "d_w", "tiles_r", "tiles_c")
    strides = [f"s{t}{a}" for t in "qkv" for a in "bhl"]
    scalars = dict.fromkeys((*ints, *strides), "i32") | {"scale_log2": "fp32"}
    meta = {"TILE_H": 8, "TILE_W": 8, "BLOCK_H": 8, "BLOCK_W": 8, "BLOCK_D": 64, "PRECISION": "tf32"}
    pointers = lambda *names: {n: "*fp32" if n in ("lse_ptr", "delta_ptr") else "*bf16" for n in names}  # noqa: E731
    signatures = {
        kernels._forward_kernel: pointers("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr") | scalars,
        kernels._backward_dq_kernel: pointers("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "dq_ptr")
        | scalars,
        kernels._backward_dkdv_kernel: pointers(
            "q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr"
        ) | scalars,
    }
    for fn, signature in signatures.items():
        # The signature in the kernel's argument order (the dicts above only name the types).
        ordered = {name: signature.get(name, "constexpr") for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, ordered, constexprs=meta), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__


@pytest.mark.parametrize(("grid", "kernel_size", "dilation", "heads", "kv_heads"), CASES)
def test_op_cpu_path_matches_the_oracle(grid, kernel_size, dilation, heads, kv_heads):
    length = grid[0] * grid[1]
    q, k, v = qkv(2, heads, kv_heads, length, length, 8, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    actual, grads = values_and_grads(
        lambda *t: neighborhood_attention_2d(*t, grid=grid, kernel_size=kernel_size, dilation=dilation), q, k, v
    )
    assert_close(actual, expected)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b)


def test_op_registrations_pass_opcheck():
    q, k, v = qkv(1, 2, 1, 20, 20, 8, requires_grad=True)
    torch.library.opcheck(
        torch.ops.panformer.neighborhood_attention_2d.default, (q, k, v, [4, 5], [3, 3], [1, 2], 0.3),
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
    assert why.chosen != "neighborhood" and "2-D Neighborhood" in why.rejected["neighborhood"]
    one_d = Neighborhood((64,), 5, 3)
    one_d_cuda = explain(replace(make_case(q, k, v, mask=one_d), device_type="cuda"))
    assert one_d_cuda.chosen == "neighborhood"
    three_d = explain(replace(make_case(q, k, v, mask=Neighborhood((4, 4, 4), 3)), device_type="cuda"))
    assert three_d.chosen != "neighborhood" and "1-D or 2-D" in three_d.rejected["neighborhood"]
    # By name on CPU: the op's reference path, through the core's attention(), 2-D and 1-D.
    q, k, v = qkv(1, 2, 1, 64, 64, 16, requires_grad=True)
    for m in (mask, one_d):
        expected, expected_grads = values_and_grads(lambda *t, m=m: reference_attention(*t, mask=m), q, k, v)
        actual, grads = values_and_grads(lambda *t, m=m: attention(*t, mask=m, backend="neighborhood"), q, k, v)
        assert_close(actual, expected)
        for a, b in zip(grads, expected_grads, strict=True):
            assert_close(a, b)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_matches_the_oracle(dtype):
    mask = Neighborhood((24, 20), 7, (1, 2))  # 480 tokens, ragged against (8, 8) tiles
    q, k, v = (t.to(dtype) for t in qkv(2, 4, 2, 480, 480, 64, device="cuda"))
    for t in (q, k, v):
        t.requires_grad_(True)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    actual, grads = values_and_grads(lambda *t: attention(*t, mask=mask, backend="neighborhood"), q, k, v)
    tol = dict(atol=5e-2, rtol=5e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-3)
    assert_close(actual.float(), expected.float(), **tol)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a.float(), b.float(), **tol)


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in CASES:
        check_triton_kernels(*case)
        print("ok", case, flush=True)
