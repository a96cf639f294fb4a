"""Quantised KV cache: code packing, the quantisation error bound, streaming equals one-shot
quantisation, and decoding through ``Attention`` with K8V8 gives nearly the full-precision logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared_attention import (
    Attention,
    Causal,
    KVCache,
    KVPrecision,
    QuantizedKVCache,
    quantized_caches,
)
from shared_attention.positions import RoPE
from shared_attention.quantized_cache import (
    dequantize,
    layer_precisions,
    pack_codes,
    quantize,
    unpack_codes,
)

from .conftest import assert_close


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 16, 24])
def test_packing_round_trips(bits, count):
    codes = torch.randint(0, 2**bits, (3, 2, count), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == -(-count * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_int4_packs_two_codes_per_byte_low_nibble_first():
    packed = pack_codes(torch.tensor([0x3, 0xA, 0xF], dtype=torch.uint8), 4)
    assert packed.tolist() == [0xA3, 0x0F]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16])
def test_dequantised_values_within_the_quantisation_bound(bits, scale_dtype):
    x = torch.randn(4, 3, 50, 24) * torch.linspace(0.1, 8.0, 24)  # channels of very different ranges
    for dim in (-1, -2):
        codes, scale, zero = quantize(x, bits, dim=dim, scale_dtype=scale_dtype)
        assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
        error = (dequantize(codes, scale, zero) - x).abs()
        # Half a step, plus the rounding of the zero point when it is stored in fp16.
        slack = 0.0 if scale_dtype == torch.float32 else 2.0**-10 * x.abs().amax(dim, keepdim=True)
        assert bool((error <= scale.float() / 2 * (1 + 1e-5) + slack + 1e-7).all())
        # The step itself is the slice's range over 2**bits - 1.
        span = x.amax(dim, keepdim=True) - x.amin(dim, keepdim=True)
        assert_close(scale.float(), span / (2**bits - 1), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("key_axis", ["channel", "token"])
@pytest.mark.parametrize("precision", ["K8V4", "K4V2", "KfpV4", "K2Vfp"])
def test_streaming_updates_equal_one_shot_quantisation(key_axis, precision):
    k, v = torch.randn(2, 2, 37, 16), torch.randn(2, 2, 37, 8)
    options = dict(v_dim=8, precision=precision, key_axis=key_axis, group_size=8)
    whole = QuantizedKVCache(2, 2, 40, 16, **options)
    expected_k, expected_v = whole.update(k, v)
    streamed = QuantizedKVCache(2, 2, 40, 16, **options)
    start = 0
    for size in (3, 1, 1, 9, 2, 16, 5):  # crosses group boundaries at odd places
        keys, values = streamed.update(k[:, :, start : start + size], v[:, :, start : start + size])
        start += size
        assert keys.shape == (2, 2, start, 16) and values.shape == (2, 2, start, 8)
    assert streamed.offset == 37
    torch.testing.assert_close(keys, expected_k, rtol=0, atol=0)
    torch.testing.assert_close(values, expected_v, rtol=0, atol=0)
    # The open key group (37 = 4 * 8 + 5) is still exact in channel mode.
    if key_axis == "channel" and precision.startswith("K2"):
        assert torch.equal(keys[:, :, 32:], k[:, :, 32:])
        assert not torch.equal(keys[:, :, :32], k[:, :, :32])


def test_full_precision_pair_is_a_plain_cache():
    k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    plain, same = KVCache(1, 2, 8, 8), QuantizedKVCache(1, 2, 8, 8, precision="fp")
    for t in range(6):
        a, b = plain.update(k[:, :, t : t + 1], v[:, :, t : t + 1]), same.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert same.nbytes == plain.nbytes


def test_memory_bytes_shrink_with_the_bits():
    def nbytes(precision, **options):
        return QuantizedKVCache(1, 8, 1024, 64, precision=precision, **options).nbytes

    fp32 = KVCache(1, 8, 1024, 64).nbytes
    assert fp32 == 2 * 8 * 1024 * 64 * 4
    # Per token and head: 64 codes + fp16 scale and zero (4 bytes); key scales per channel per 32 tokens.
    assert nbytes("K8V8") < fp32 / 3.4  # ~3.7x less, minus the fp32 residual group
    assert nbytes("K4V4") < nbytes("K8V4") < nbytes("K8V8")
    assert nbytes("K4V2") < nbytes("K4V4")
    assert nbytes("K4V4", key_axis="token") == 2 * 8 * 1024 * (32 + 4)


def test_precision_names_and_errors():
    assert str(KVPrecision.parse("k8v4")) == "K8V4" and str(KVPrecision.parse("fp")) == "fp"
    assert KVPrecision.parse("KfpV2") == KVPrecision(None, 2)
    assert [str(p) for p in layer_precisions("K8V8,K4V4", 2)] == ["K8V8", "K4V4"]
    assert [str(p) for p in layer_precisions("K4V2", 3)] == ["K4V2"] * 3
    for bad in ("K3V4", "int8", "K8"):
        with pytest.raises(ValueError, match="KV precision"):
            KVPrecision.parse(bad)
    with pytest.raises(ValueError, match="has 3"):
        layer_precisions("K8V8,K4V4", 3)
    cache = QuantizedKVCache(1, 2, 4, 8, precision="K4V4")
    with pytest.raises(ValueError, match="overflows"):
        cache.update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="cannot take"):
        cache.update(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    cache.update(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    cache.reset()
    assert cache.offset == 0 and cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))[0].shape[2] == 1


class _TinyDecoder(nn.Module):
    """Two pre-norm attention blocks (RoPE, grouped-query heads) and a vocabulary head."""

    def __init__(self, vocab: int = 50, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.layers = nn.ModuleList(
            Attention(dim, 4, num_kv_heads=2, position=RoPE()) for _ in range(depth)
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, caches=None):
        x = self.embed(tokens)
        for i, (norm, layer) in enumerate(zip(self.norms, self.layers, strict=True)):
            x = x + layer(norm(x), mask=Causal(), cache=None if caches is None else caches[i])
        return self.head(x)


@pytest.fixture(scope="module")
def decoder_and_logits():
    torch.manual_seed(0)
    model = _TinyDecoder().eval()
    tokens = torch.randint(0, 50, (2, 80))
    with torch.no_grad():
        return model, tokens, model(tokens)


def _decoded_logits(model, tokens, precisions, *, prefill=16, **options):
    caches = quantized_caches(
        precisions, num_layers=2, batch_size=2, num_kv_heads=2, max_len=80, head_dim=16, group_size=16, **options
    )
    with torch.no_grad():
        outs = [model(tokens[:, :prefill], caches)]
        outs += [model(tokens[:, t : t + 1], caches) for t in range(prefill, tokens.shape[1])]
    return torch.cat(outs, dim=1)


def test_decoding_with_k8v8_gives_nearly_the_full_precision_logits(decoder_and_logits):
    model, tokens, full = decoder_and_logits
    assert_close(_decoded_logits(model, tokens, "fp"), full)
    errors = {p: float((_decoded_logits(model, tokens, p) - full).abs().max()) for p in ("K8V8", "K4V4", "K2V2")}
    scale = float(full.abs().max())
    assert errors["K8V8"] < 0.01 * scale, errors
    # Fewer bits, larger error (strictly, by a wide margin at each step).
    assert 2 * errors["K8V8"] < errors["K4V4"] < errors["K2V2"], errors
    # K8V8 picks the same next token almost everywhere.
    agree = (_decoded_logits(model, tokens, "K8V8").argmax(-1) == full.argmax(-1)).float().mean()
    assert float(agree) > 0.97


def test_per_layer_precision_pairs_and_token_axis_keys(decoder_and_logits):
    model, tokens, full = decoder_and_logits
    mixed = _decoded_logits(model, tokens, ["K8V8", "K2V2"])
    low = _decoded_logits(model, tokens, "K2V2")
    high = _decoded_logits(model, tokens, "K8V8")
    err = lambda x: float((x - full).abs().mean())  # noqa: E731
    assert err(high) < err(mixed) < err(low)
    assert err(_decoded_logits(model, tokens, "K8V8", key_axis="token")) < 0.01 * float(full.abs().max())
