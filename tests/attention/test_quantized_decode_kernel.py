"""The panformer::quantized_decode_attention op: the Triton kernels (run by Triton's interpreter on CPU,
TRITON_INTERPRET=1) and the op's CPU path against the dequantise-then-softmax oracle in fp32, every key /
value bits pair, both key axes, grouped-query heads; ``QuantizedKVCache.decode_attention`` against
attention over ``update``'s keys and values; fp16 / bf16 on CUDA at a realistic size."""

from __future__ import annotations

import os

import pytest
import torch

from panformer_kernels.quantized_attention import (
    fused_decode_supports,
    merge_attention,
    quantized_decode_attention,
)
from shared_attention import QuantizedKVCache
from shared_attention.quantized_cache import dequantize, pack_codes, quantize, unpack_codes

from .conftest import assert_close, run_in_interpreter

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (key bits, value bits, key axis, group size, heads, kv heads, Lq, n, D, Dv, block_n, splits):
# every bits pair among them (mixed too), per-channel groups holding whole token blocks, made of whole
# groups, or neither (24-token groups: the key tile is dequantised in registers), ragged n, one and several
# splits.
CASES = [
    (8, 8, "channel", 32, 4, 2, 1, 96, 32, 32, 16, 3),
    (4, 4, "channel", 32, 4, 1, 2, 70, 32, 32, 16, 2),
    (2, 2, "channel", 16, 2, 2, 1, 45, 64, 64, 16, 1),
    (8, 4, "token", 16, 4, 2, 1, 53, 32, 32, 32, 2),
    (4, 2, "token", 16, 2, 1, 2, 37, 32, 64, 16, 3),
    (2, 8, "channel", 24, 4, 2, 1, 72, 32, 32, 16, 2),
    (4, 8, "token", 16, 8, 2, 1, 20, 64, 32, 16, 1),
    (2, 4, "channel", 32, 4, 4, 2, 64, 32, 32, 32, 2),
    (4, 4, "channel", 16, 4, 2, 1, 88, 32, 32, 64, 2),  # 4 groups per token block, a tail ending mid-block
    (8, 2, "channel", 8, 2, 1, 1, 50, 16, 32, 32, 1),  # 4 groups of 8 tokens per block
]


def quantized_side(x: torch.Tensor, bits: int, *, axis: str, group_size: int):
    """x (B, Hkv, T, D) -> packed codes, scale, zero as QuantizedKVCache stores them."""
    if axis == "token":
        codes, scale, zero = quantize(x, bits, dim=-1)
        return pack_codes(codes, bits), scale, zero
    groups = x.unflatten(2, (-1, group_size))  # T a multiple of G here
    codes, scale, zero = quantize(groups, bits, dim=3)
    return pack_codes(codes.flatten(2, 3), bits), scale.squeeze(3), zero.squeeze(3)


def oracle(q, k_side, v_side, *, n, key_bits, value_bits, key_axis, group_size, dim, v_dim, scale):
    """Dequantise with the cache's own functions, then fp32 softmax attention (repeated kv heads)."""
    kc, ks, kz = k_side
    keys = unpack_codes(kc[:, :, :n], key_bits, dim)
    if key_axis == "token":
        keys = dequantize(keys, ks[:, :, :n], kz[:, :, :n])
    else:
        rows = torch.arange(n) // group_size
        keys = dequantize(keys, ks[:, :, rows], kz[:, :, rows])
    vc, vs, vz = v_side
    values = dequantize(unpack_codes(vc[:, :, :n], value_bits, v_dim), vs[:, :, :n], vz[:, :, :n])
    group = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    scores = (q.float() @ keys.transpose(-2, -1)) * scale
    lse = scores.logsumexp(-1)
    return (scores - lse[..., None]).exp() @ values, lse


def make_case(key_bits, value_bits, key_axis, group_size, heads, kv_heads, q_len, n, dim, v_dim, *, batch=2,
              device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    capacity = -(-n // group_size) * group_size + group_size  # room past n: the op must not read it
    q = torch.randn(batch, heads, q_len, dim, generator=g)
    k = torch.randn(batch, kv_heads, capacity, dim, generator=g) * torch.linspace(0.2, 4.0, dim)  # outlier channels
    v = torch.randn(batch, kv_heads, capacity, v_dim, generator=g) + 0.5
    k_side = quantized_side(k, key_bits, axis=key_axis, group_size=group_size)
    v_side = quantized_side(v, value_bits, axis="token", group_size=group_size)
    move = lambda t: t.to(device)  # noqa: E731
    return move(q).to(dtype), tuple(map(move, k_side)), tuple(map(move, v_side))


def check_triton_kernel(key_bits, value_bits, key_axis, group_size, heads, kv_heads, q_len, n, dim, v_dim, block_n,
                        splits) -> None:
    """The Triton kernels (small blocks, several splits) against the oracle; raises on mismatch."""
    from panformer_kernels.triton_quantized_attention import quantized_decode_forward

    q, k_side, v_side = make_case(key_bits, value_bits, key_axis, group_size, heads, kv_heads, q_len, n, dim, v_dim)
    options = dict(n=n, key_bits=key_bits, value_bits=value_bits, key_axis=key_axis, group_size=group_size,
                   v_dim=v_dim, scale=dim**-0.5)
    expected, expected_lse = oracle(q, k_side, v_side, dim=dim, **options)
    config = dict(block_n=block_n, splits=splits, num_warps=4, num_stages=1)
    out, lse = quantized_decode_forward(q, *k_side, *v_side, config=config, **options)
    assert_close(out, expected)
    assert_close(lse, expected_lse)


def test_triton_kernels_match_the_oracle_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(CASES) + len(INTEGRATION) + len(QUANTIZE))


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the decode kernel to a cubin for sm_90 (bf16; every key mode, tiles of 1 or 2 key groups,
    int4 / int2 phases, with and without the residual) and the split merge: what the interpreter cannot check (types, layouts, loops with run-time bounds) compiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from panformer_kernels import triton_quantized_attention as kernels

    def compile_(fn, signature, meta):
        ordered = {name: signature.get(name, "constexpr") for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, ordered, constexprs=meta), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__

    pointers = {"q_ptr": "*bf16", "kc_ptr": "*u8", "ks_ptr": "*fp16", "kz_ptr": "*fp16", "kr_ptr": "*fp32",
                "vc_ptr": "*u8", "vs_ptr": "*fp16", "vz_ptr": "*fp16", "po_ptr": "*fp32", "plse_ptr": "*fp32"}
    scalars = {name: "i32" for name in kernels._decode_kernel.arg_names if name.startswith("s") or name in (
        "kv_heads", "q_len", "n_tokens", "chunk", "n_residual", "group_size")} | {"qk_scale": "fp32"}
    for key_bits, value_bits, mode, groups, residual in ((4, 4, kernels.KEY_CHANNEL_ALIGNED, 2, True),
                                                         (4, 2, kernels.KEY_CHANNEL_ALIGNED, 1, False),
                                                         (2, 8, kernels.KEY_TOKEN, 1, False),
                                                         (8, 2, kernels.KEY_CHANNEL_GATHER, 1, True)):
        meta = {"ROWS": 4, "DIM_PK": 128 * key_bits // 8, "DIM_PV": 128 * value_bits // 8, "KEY_BITS": key_bits,
                "VALUE_BITS": value_bits, "KEY_MODE": mode, "GROUPS": groups, "HAS_RESIDUAL": residual, "BLOCK_M": 16,
                "BLOCK_N": 64, "BLOCK_PK": 128 * key_bits // 8, "BLOCK_PV": 128 * value_bits // 8,
                "PRECISION": "tf32"}
        assert set(kernels._decode_kernel.arg_names) == set(pointers) | set(scalars) | set(meta)
        compile_(kernels._decode_kernel, pointers | scalars, meta)
    merge = {"po_ptr": "*fp32", "plse_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32", "num_splits": "i32",
             "rows": "i32", "dim_v": "i32"}
    compile_(kernels._merge_splits_kernel, merge, {"BLOCK_S": 64, "BLOCK_DV": 128})
    quantize_ = {name: "i32" for name in kernels._quantize_tokens_kernel.arg_names
                 if name.startswith("s") or name in ("kv_heads", "length")}
    quantize_ |= {"x_ptr": "*bf16", "codes_ptr": "*u8", "scale_ptr": "*fp16", "zero_ptr": "*fp16", "tiny": "fp32"}
    for bits in (2, 4, 8):
        compile_(kernels._quantize_tokens_kernel, quantize_, {"DIM_P": 128 * bits // 8, "BITS": bits,
                                                               "BLOCK_P": 128 * bits // 8})


@pytest.mark.parametrize("key_bits", [2, 4, 8])
@pytest.mark.parametrize("value_bits", [2, 4, 8])
@pytest.mark.parametrize("key_axis", ["channel", "token"])
def test_op_cpu_path_matches_the_oracle(key_bits, value_bits, key_axis):
    n, q_len = 40, 2 if key_bits == value_bits else 1
    q, k_side, v_side = make_case(key_bits, value_bits, key_axis, 8, 4, 2, q_len, n, 24, 16)
    options = dict(n=n, key_bits=key_bits, value_bits=value_bits, key_axis=key_axis, group_size=8, v_dim=16,
                   scale=0.3)
    expected, expected_lse = oracle(q, k_side, v_side, dim=24, **options)
    out, lse = quantized_decode_attention(q, *k_side, *v_side, **options)
    assert_close(out, expected)
    assert_close(lse, expected_lse)


def test_op_with_no_tokens_gives_zero_weight():
    q, k_side, v_side = make_case(4, 4, "channel", 16, 2, 1, 1, 16, 16, 16)
    out, lse = quantized_decode_attention(q, *k_side, *v_side, n=0, key_bits=4, value_bits=4, group_size=16)
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())


def test_merge_attention_equals_attention_over_the_union():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 2, 8, generator=g), torch.randn(2, 3, 11, 8, generator=g),
               torch.randn(2, 3, 11, 5, generator=g))

    def attend(keys, values):
        scores = q @ keys.transpose(-2, -1)
        lse = scores.logsumexp(-1)
        return (scores - lse[..., None]).exp() @ values, lse

    expected, expected_lse = attend(k, v)
    out, lse = merge_attention(*attend(k[:, :, :4], v[:, :, :4]), *attend(k[:, :, 4:], v[:, :, 4:]))
    assert_close(out, expected)
    assert_close(lse, expected_lse)
    empty = (torch.zeros_like(expected), torch.full_like(expected_lse, float("-inf")))
    out, lse = merge_attention(*empty, expected, expected_lse)
    assert_close(out, expected)
    assert_close(lse, expected_lse)


def test_op_registrations_pass_opcheck():
    q, k_side, v_side = make_case(4, 2, "channel", 8, 4, 2, 1, 24, 16, 16)
    torch.library.opcheck(
        torch.ops.panformer.quantized_decode_attention.default,
        (q, *k_side, *v_side, None, 0, 20, 4, "channel", 8, 2, 16, 0.25),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_fused_decode_supports_names_what_the_kernel_takes():
    q = torch.randn(1, 8, 1, 128)
    assert not fused_decode_supports(q, key_bits=4, value_bits=4, num_kv_heads=2)  # CPU: reference math
    meta = q.to("meta")
    assert not fused_decode_supports(meta, key_bits=None, value_bits=4, num_kv_heads=2)


def decode_both_ways(precision, key_axis, *, prompt, steps, q_len=1, heads=4, kv_heads=2, dim=16, group_size=8,
                     device="cpu", dtype=torch.float32, seed=0):
    """Fill two caches alike with a prompt, then decode ``steps`` steps: ``decode_attention`` on one,
    attention over ``update``'s keys and values on the other. Yields (fused, expected) per step."""
    g = torch.Generator().manual_seed(seed)
    caches = [QuantizedKVCache(2, kv_heads, prompt + steps * q_len, dim, precision=precision, key_axis=key_axis,
                               group_size=group_size, dtype=dtype, device=device) for _ in range(2)]
    k, v = torch.randn(2, 2, kv_heads, prompt, dim, generator=g).to(device, dtype)
    for cache in caches:
        cache.append(k, v)
    scale = dim**-0.5
    for _ in range(steps):
        q = torch.randn(2, heads, q_len, dim, generator=g).to(device, dtype)
        k, v = torch.randn(2, 2, kv_heads, q_len, dim, generator=g).to(device, dtype)
        fused = caches[0].decode_attention(q, k, v, scale=scale)
        keys, values = caches[1].update(k, v)
        group = heads // kv_heads
        keys, values = keys.repeat_interleave(group, 1).float(), values.repeat_interleave(group, 1).float()
        expected = torch.softmax((q.float() @ keys.transpose(-2, -1)) * scale, -1) @ values
        yield fused, expected


@pytest.mark.parametrize("precision", ["K8V8", "K4V2", "K2V4", "K8V4"])
@pytest.mark.parametrize("key_axis", ["channel", "token"])
def test_decode_attention_equals_attention_over_update(precision, key_axis):
    # prompt 5 < G: every early step reads only the residual (n == 0); then groups complete as steps go.
    for fused, expected in decode_both_ways(precision, key_axis, prompt=5, steps=14):
        assert fused.shape == expected.shape
        assert_close(fused, expected)
    for fused, expected in decode_both_ways(precision, key_axis, prompt=19, steps=3, q_len=2):
        assert_close(fused, expected)


def test_decode_attention_with_a_full_precision_side_falls_back_to_update():
    cache = QuantizedKVCache(1, 2, 8, 16, precision="KfpV4")
    assert not cache.supports_fused_decode(torch.randn(1, 4, 1, 16))
    for fused, expected in decode_both_ways("KfpV4", "channel", prompt=3, steps=2):
        assert_close(fused, expected)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("key_bits", "value_bits", "key_axis"),
                         [(8, 8, "channel"), (4, 4, "channel"), (2, 2, "channel"), (4, 4, "token"), (8, 4, "channel"),
                          (4, 2, "token")])
def test_cuda_kernel_matches_the_oracle(dtype, key_bits, value_bits, key_axis):
    n = 8192 - 32
    q, k_side, v_side = make_case(key_bits, value_bits, key_axis, 32, 32, 8, 1, n, 128, 128, batch=4,
                                  device="cuda", dtype=dtype)
    options = dict(n=n, key_bits=key_bits, value_bits=value_bits, key_axis=key_axis, group_size=32, v_dim=128,
                   scale=128**-0.5)
    expected, expected_lse = oracle(q.float(), k_side, v_side, dim=128, **options)
    out, lse = quantized_decode_attention(q, *k_side, *v_side, **options)
    assert out.dtype == dtype
    assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    assert_close(lse, expected_lse, atol=2e-2, rtol=1e-3)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["K8V8", "K4V2", "K2V4"])
def test_cuda_cache_stores_the_codes_of_the_cpu_cache(precision):
    """Per-token appends on CUDA go through the quantise + pack kernel: the same bytes as the torch form."""
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 2, 4, 37, 64, generator=g)
    caches = [QuantizedKVCache(2, 4, 64, 64, precision=precision, key_axis="token", device=d) for d in ("cpu", "cuda")]
    for cache in caches:
        cache.append(k[:, :, :30].to(cache.key_store.codes.device), v[:, :, :30].to(cache.key_store.codes.device))
        for t in range(30, 37):  # decoding: one token at a time
            cache.append(k[:, :, t : t + 1].to(cache.key_store.codes.device),
                         v[:, :, t : t + 1].to(cache.key_store.codes.device))
    for cpu, cuda in zip(caches[0].key_store.buffers() + caches[0].value_store.buffers(),
                         caches[1].key_store.buffers() + caches[1].value_store.buffers(), strict=True):
        assert torch.equal(cpu, cuda.cpu())


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["K8V8", "K4V4", "K2V2"])
@pytest.mark.parametrize("key_axis", ["channel", "token"])
def test_cuda_decode_attention_equals_attention_over_update(precision, key_axis):
    for fused, expected in decode_both_ways(precision, key_axis, prompt=1000, steps=40, heads=8, kv_heads=2,
                                            dim=128, group_size=32, device="cuda", dtype=torch.bfloat16):
        assert_close(fused.float(), expected, atol=3e-2, rtol=3e-2)


def check_decode_attention_on_the_kernel(precision: str, key_axis: str, prompt: int) -> None:
    """``QuantizedKVCache.decode_attention`` through the op's CUDA implementation (its argument handling, the
    default kernel configuration, the Triton kernels) in place of the CPU one, on the cache's own buffers,
    strides and residual group, against attention over ``update``; raises on mismatch."""
    from panformer_kernels import quantized_attention

    reference = quantized_attention._reference_forward

    def through_the_cuda_path(*args):
        quantized_attention._reference_forward = reference  # what the CUDA path falls back to
        try:
            return quantized_attention._quantized_decode_attention_cuda(*args)
        finally:
            quantized_attention._reference_forward = through_the_cuda_path

    quantized_attention._reference_forward = through_the_cuda_path
    try:
        for fused, expected in decode_both_ways(precision, key_axis, prompt=prompt, steps=3, group_size=16):
            assert_close(fused, expected)
    finally:
        quantized_attention._reference_forward = reference


def check_quantize_kernel(bits: int, scale_dtype: torch.dtype) -> None:
    """The per-token quantise + pack kernel (what a CUDA cache appends with) writes exactly the codes, scales
    and zero points of the torch form, rounding ties to even, into a strided slot of the buffers."""
    from panformer_kernels.triton_quantized_attention import quantize_tokens_into

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 3, 5, 32, generator=g) * torch.linspace(0.1, 5.0, 32)
    levels = 2**bits - 1
    x[0, 0, 0] = 0.0
    x[0, 0, 0, :4] = torch.tensor([0.0, levels, 1.5, 0.5])  # scale 1: codes 1.5 -> 2 and 0.5 -> 0 (ties)
    x[0, 1, 1] = 0.7  # a constant token
    x = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, H, D) memory, as projections make it
    codes = torch.zeros(2, 3, 9, 32 * bits // 8, dtype=torch.uint8)
    scale, zero = torch.zeros(2, 3, 9, 1, dtype=scale_dtype), torch.zeros(2, 3, 9, 1, dtype=scale_dtype)
    quantize_tokens_into(x, codes, scale, zero, bits=bits, start=2)
    expected_codes, expected_scale, expected_zero = quantize(x, bits, dim=-1, scale_dtype=scale_dtype)
    assert torch.equal(codes[:, :, 2:7], pack_codes(expected_codes, bits))
    assert torch.equal(scale[:, :, 2:7], expected_scale) and torch.equal(zero[:, :, 2:7], expected_zero)
    assert not codes[:, :, :2].any() and not codes[:, :, 7:].any()


QUANTIZE = [(2, torch.float16), (4, torch.float16), (8, torch.float32)]

# (precision, key axis, prompt): residual with quantised tokens; per-token keys; only the residual (n == 0).
INTEGRATION = [("K4V2", "channel", 40), ("K8V4", "token", 40), ("K2V8", "channel", 5)]


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in CASES:
        check_triton_kernel(*case)
        print("ok", case, flush=True)
    for case in INTEGRATION:
        check_decode_attention_on_the_kernel(*case)
        print("ok decode_attention", case, flush=True)
    for case in QUANTIZE:
        check_quantize_kernel(*case)
        print("ok quantize", case, flush=True)


@gpu
@pytest.mark.gpu
def test_attention_layer_decodes_through_the_fused_op():
    # Attention.forward takes the fused path on CUDA for one new token under Causal (RoPE in q/k already);
    # backend="reference" takes update() + ordinary attention: the two decodes agree step by step.
    from shared_attention import Attention, Causal, RoPE

    torch.manual_seed(0)
    layer = Attention(128, 4, position=RoPE()).cuda().eval()
    prompt, steps = torch.randn(2, 40, 128, device="cuda"), torch.randn(30, 2, 1, 128, device="cuda")
    caches = [QuantizedKVCache(2, 4, 80, 32, precision="K4V4", device="cuda") for _ in range(2)]
    fused_calls = []
    decode = caches[0].decode_attention
    caches[0].decode_attention = lambda *a, **kw: fused_calls.append(1) or decode(*a, **kw)
    with torch.no_grad():
        for cache, backend in zip(caches, ("auto", "reference"), strict=True):
            layer(prompt, cache=cache, mask=Causal(), backend=backend)
        for x in steps:
            fused = layer(x, cache=caches[0], mask=Causal())
            plain = layer(x, cache=caches[1], mask=Causal(), backend="reference")
            assert_close(fused, plain, atol=2e-3, rtol=2e-3)
    assert caches[0].length == caches[1].length == 70
    assert len(fused_calls) == 30  # every decoded token, not the prompt (Causal over 40 queries)
