"""The panformer::local_global_attention op (MossFormer's joint local + global attention, non-causal and
causal):
the Triton kernels (run by Triton's interpreter on CPU, TRITON_INTERPRET=1) and the op's CPU path
against the core's oracle ``gated_local_global_attention_reference``, values and gradients in fp32;
the CUDA kernels in bf16 on a GPU."""

from __future__ import annotations

import os

import pytest
import torch

from panformer_kernels.gated_attention import local_global_attention
from shared_attention.variants.gated import gated_local_global_attention_reference

from .conftest import assert_close, run_in_interpreter

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (N, L, Z, E, chunk, key_valid, causal, blocks): L not a multiple of the chunk, chunks of 16 and 32
# (and 24, not a power of two), E 16 and 24 (tiles wider than E); the blocks given make E span
# several tiles (the kernels' multi-tile loops) and query and key tiles differ (the causal skips).
_SPLIT_TILES = ((16, 32, 16), (32, 16, 16), (16, 16, 16))
_OTHER_TILES = ((32, 16, 16), (16, 32, 32), (32, 16, 32))
CASES = [
    (2, 50, 16, 16, 16, False, False, None),
    (2, 50, 16, 24, 16, True, False, None),
    (1, 70, 16, 24, 32, True, False, None),
    (1, 70, 16, 16, 32, False, False, None),
    (2, 75, 24, 40, 32, True, False, _SPLIT_TILES),
    (1, 75, 16, 40, 24, False, False, _OTHER_TILES),
    (2, 50, 16, 24, 16, True, True, None),
    (1, 70, 16, 16, 32, False, True, None),
    (2, 75, 24, 40, 32, True, True, _SPLIT_TILES),
    (1, 75, 16, 40, 24, False, True, _OTHER_TILES),
]


def make_inputs(n, length, dim_z, dim_e, *, masked, device="cpu", dtype=torch.float32, seed=0):
    """quad_q, quad_k, lin_q, lin_k (N, L, Z), value (N, L, E) needing grads; key_valid or None."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, length, dim_z, generator=generator) for _ in range(4)]
    tensors.append(torch.randn(n, length, dim_e, generator=generator))
    tensors[0] = tensors[0] * 3  # relu(q k^T / g)^2 of a size comparable to the global term
    tensors = [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]
    key_valid = None
    if masked:
        key_valid = (torch.rand(n, length, generator=generator) > 0.3).to(device)
        key_valid[:, :3] = True
    return tensors, key_valid


def oracle(tensors, key_valid, chunk, *, causal=False, seed=7):
    """The reference output and the gradients of a fixed random projection of it."""
    out = gated_local_global_attention_reference(*tensors, chunk_size=chunk, causal=causal, key_valid=key_valid)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = torch.autograd.grad((out.float() * weight.float()).sum(), tensors)
    return out.detach(), weight, grads


def check_triton_kernels(n, length, dim_z, dim_e, chunk, masked, causal, blocks) -> None:
    """The Triton forward and backward against the oracle; raises on mismatch."""
    from panformer_kernels.triton_gated_attention import gated_backward, gated_forward

    tensors, key_valid = make_inputs(n, length, dim_z, dim_e, masked=masked)
    expected, weight, expected_grads = oracle(tensors, key_valid, chunk, causal=causal)
    named = [None] * 3 if blocks is None else [dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_E"), b, strict=True)) for b in blocks]
    plain = [t.detach() for t in tensors]
    out, state = gated_forward(*plain, key_valid, chunk_size=chunk, causal=causal, blocks=named[0])
    assert_close(out, expected)
    grads = gated_backward(
        weight, *plain, key_valid, state, chunk_size=chunk, causal=causal, dq_blocks=named[1], dkdv_blocks=named[2]
    )
    for actual, wanted in zip(grads, expected_grads, strict=True):
        assert_close(actual, wanted)


def test_triton_kernels_match_the_oracle_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(CASES))


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the four kernels to a cubin for sm_90 (bf16, causal, with key_valid): what the
    interpreter cannot check (types, layouts, the run-time branch of several E tiles) compiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from panformer_kernels import triton_gated_attention as kernels

    def pointers(*names, fp32=()):
        return {n: "*fp32" if n in fp32 else "*bf16" for n in names}

    scalars = {"seq_len": "i32", "inv_g": "fp32", "valid_ptr": "*u8", "state_stride_n": "i32", "state_stride_c": "i32"}
    meta = {"CHUNK": 64, "DIM_Z": 64, "HAS_VALID": True, "CAUSAL": True, "BLOCK_Z": 64, "PRECISION": "tf32"}
    blocks = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_E": 32}
    builds = [
        (kernels._state_kernel, pointers("a_ptr", "b_ptr", "out_ptr", fp32=("out_ptr",)) | {"valid_ptr": "*u8"}
         | {"seq_len": "i32", "rows_per_split": "i32", "scale": "fp32"},
         {"DIM_A": 64, "DIM_B": 64, "HAS_VALID": True, "BLOCK_L": 64, "BLOCK_A": 64, "BLOCK_B": 64, "PRECISION": "tf32"}),
        (kernels._forward_kernel, pointers("qq_ptr", "qk_ptr", "lq_ptr", "v_ptr", "state_ptr", "out_ptr", fp32=("state_ptr",))
         | scalars, meta | blocks | {"DIM_E": 64}),
        (kernels._backward_dq_kernel, pointers("qq_ptr", "qk_ptr", "v_ptr", "do_ptr", "state_ptr", "dqq_ptr", "dlq_ptr",
                                               fp32=("state_ptr",)) | scalars, meta | blocks | {"DIM_E": 96}),
    ]
    dkdv = pointers("qq_ptr", "qk_ptr", "lk_ptr", "v_ptr", "do_ptr", "dstate_ptr", "dqk_ptr", "dlk_ptr", "dv_ptr",
                    fp32=("dstate_ptr",)) | scalars
    builds += [(kernels._backward_dkdv_kernel, dkdv, meta | blocks | {"DIM_E": e}) for e in (32, 96)]  # one / three E tiles
    for fn, signature, constexprs in builds:
        ordered = {name: signature.get(name, "constexpr") for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, ordered, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [16, 32])
def test_op_cpu_path_matches_the_oracle(chunk, masked, causal):
    tensors, key_valid = make_inputs(2, 45, 16, 24, masked=masked)
    expected, weight, expected_grads = oracle(tensors, key_valid, chunk, causal=causal)
    out = local_global_attention(*tensors, chunk_size=chunk, causal=causal, key_valid=key_valid)
    grads = torch.autograd.grad((out * weight).sum(), tensors)
    assert_close(out, expected)
    for actual, wanted in zip(grads, expected_grads, strict=True):
        assert_close(actual, wanted)


def test_op_matches_the_core_function_with_leading_dims():
    """(B, H, L, Z) inputs flatten to B * H sequences; key_valid (B, 1, L) broadcasts over heads."""
    from shared_attention.variants.gated import gated_local_global_attention

    tensors, _ = make_inputs(6, 40, 16, 16, masked=False)
    tensors = [t.detach().unflatten(0, (2, 3)) for t in tensors]
    key_valid = torch.arange(40)[None, None, :].expand(2, 1, 40) < torch.tensor([40, 25])[:, None, None]
    out = local_global_attention(*tensors, chunk_size=16, key_valid=key_valid)
    flat = [t.flatten(0, 1) for t in tensors]
    expected = gated_local_global_attention(
        *flat, chunk_size=16, causal=False, key_valid=key_valid.expand(2, 3, 40).flatten(0, 1)
    )
    assert_close(out.flatten(0, 1), expected)


def test_op_registrations_pass_opcheck():
    tensors, key_valid = make_inputs(2, 20, 8, 8, masked=True)
    for valid, causal in ((None, False), (key_valid, False), (key_valid, True)):
        torch.library.opcheck(
            torch.ops.panformer.local_global_attention.default, (*tensors, valid, 8, causal),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )


def test_op_rejects_mismatched_inputs():
    tensors, _ = make_inputs(1, 16, 8, 8, masked=False)
    with pytest.raises(ValueError, match="quad_q, quad_k, lin_q, lin_k"):
        local_global_attention(*tensors[:4], tensors[4][:, :8], chunk_size=8)
    with pytest.raises(TypeError, match="share a dtype"):
        local_global_attention(*tensors[:4], tensors[4].double(), chunk_size=8)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("masked", "causal"), [(False, False), (True, False), (True, True)])
def test_cuda_kernels_match_the_oracle_in_bf16(masked, causal):
    """L=2048, chunk 256, Z=E=128 in bf16 through the op (Triton, autotuned) against the fp32 oracle."""
    tensors, key_valid = make_inputs(4, 2048 - 37, 128, 128, masked=masked, device="cuda", dtype=torch.bfloat16)
    expected, weight, expected_grads = oracle(tensors, key_valid, 256, causal=causal)
    out = local_global_attention(*tensors, chunk_size=256, causal=causal, key_valid=key_valid)
    grads = torch.autograd.grad((out.float() * weight.float()).sum(), tensors)
    # A second call launches the autotuner's choice directly: the same result, bit for bit.
    assert torch.equal(local_global_attention(*tensors, chunk_size=256, causal=causal, key_valid=key_valid), out)

    def relative_error(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    assert relative_error(out, expected) < 1e-2
    for name, actual, wanted in zip(("quad_q", "quad_k", "lin_q", "lin_k", "value"), grads, expected_grads, strict=True):
        assert relative_error(actual, wanted) < 2e-2, name


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in CASES:
        check_triton_kernels(*case)
        print("ok", case[:7], flush=True)
