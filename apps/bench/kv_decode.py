"""One decode step over a long quantised KV cache: the fused op against today's path and an fp16 cache.

For each shape (B, H, Hkv, D, T) and cache precision, a cache is filled with T - 17 random tokens (keys
with outlier channels), then one decode step (one new token, Lq = 1, H / Hkv query heads per kv head)
is timed, rewinding the cache before each call so every call does the same work (the per-channel key
residual then holds 16 of G = 32 tokens, the average):

- (a) fused: ``QuantizedKVCache.decode_attention`` (``panformer::quantized_decode_attention`` over the
  codes, exact softmax over the residual group, merged by log-sum-exp);
- (b) today: ``QuantizedKVCache.update`` (dequantises every cached token) + the core's ``attention``;
- (c) an fp16 ``KVCache`` + the core's ``attention`` (SDPA on CUDA): the unquantised baseline.

Effective GB/s count the cache bytes a step must read (codes, scales and zero points, residual; fp16
keys and values for (c)) over its time. Contenders are timed interleaved (``timing.time_interleaved``).

    python apps/bench/kv_decode.py --out apps/bench/results/kv-decode-h200.md
    python apps/bench/kv_decode.py --sweep        # also token block / warps / stages / splits of the kernel
    python apps/bench/kv_decode.py --tiny --device cpu   # a wiring check in seconds
"""

from __future__ import annotations

import argparse
import platform
import sys
from functools import partial
from pathlib import Path

import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path
from timing import time_interleaved, triton_version

from shared_attention import KVCache, QuantizedKVCache, attention

PRECISIONS = ("fp16", "K8V8", "K4V4", "K2V2", "K4V4@token", "K8V4")
# (B, H, Hkv, D, T): a GQA LLM-like layer, and MMT at paper size (8 heads x 64, 1024 events) sampling 8 pieces.
SHAPES = [(b, 32, 8, 128, t) for t in (4096, 32768, 131072) for b in (1, 8)] + [(8, 8, 8, 64, 1024)]
TINY_SHAPES = [(1, 4, 2, 16, 64), (2, 4, 4, 24, 96)]
GROUP_SIZE = 32
BACKLOG = 17  # the cache holds T - BACKLOG tokens before each timed step


def make_cache(precision: str, shape, *, dtype, device):
    batch, _, kv_heads, dim, capacity = shape
    if precision == "fp16":
        return KVCache(batch, kv_heads, capacity, dim, dtype=dtype, device=device)
    spec, _, axis = precision.partition("@")
    return QuantizedKVCache(batch, kv_heads, capacity, dim, dtype=dtype, device=device, precision=spec,
                            key_axis=axis or "channel", group_size=GROUP_SIZE)


def fill(cache, shape, tokens: int, *, dtype, device, chunk: int = 8192) -> None:
    """Append ``tokens`` random tokens in chunks (keys with channels of very different ranges)."""
    batch, _, kv_heads, dim, _ = shape
    generator = torch.Generator(device=device).manual_seed(0)
    spread = torch.linspace(0.2, 4.0, dim, device=device)
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        k = torch.randn(batch, kv_heads, n, dim, device=device, generator=generator) * spread
        v = torch.randn(batch, kv_heads, n, dim, device=device, generator=generator)
        if isinstance(cache, KVCache):
            cache.update(k.to(dtype), v.to(dtype))
        else:
            cache.append(k.to(dtype), v.to(dtype))


def rewind(cache, length: int) -> None:
    """Forget the tokens past ``length`` (the open key group's residual stays valid)."""
    if isinstance(cache, KVCache):
        cache.length = length
    else:
        cache.key_store.length = cache.value_store.length = length


def bytes_read(cache, length: int) -> int:
    """Cache bytes a decode step over ``length`` tokens reads (codes, statistics, residual / fp keys, values)."""
    if isinstance(cache, KVCache):
        return sum(t[:, :, :length].numel() * t.element_size() for t in (cache.keys, cache.values))
    total = 0
    for store in (cache.key_store, cache.value_store):
        if store.bits is None:
            total += store.full[:, :, :length].numel() * store.full.element_size()
            continue
        n = store.quantized_length if store.length == length else length - length % store.group_size
        rows = -(-n // store.group_size) if store.axis == "channel" else n
        total += store.codes[:, :, :n].numel() + 2 * store.scale[:, :, :rows].numel() * store.scale.element_size()
        if store.axis == "channel":
            total += store.residual[:, :, : length - n].numel() * store.residual.element_size()
    return total


def step_inputs(shape, *, dtype, device):
    batch, heads, kv_heads, dim, _ = shape
    g = torch.Generator(device=device).manual_seed(1)
    q = torch.randn(batch, heads, 1, dim, device=device, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, 1, dim, device=device, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, 1, dim, device=device, generator=g).to(dtype)
    return q, k, v


def shape_rows(shape, args, *, dtype, device) -> list[str]:
    """Markdown rows of one shape: the unquantised baseline, then every quantised precision."""
    capacity = shape[4]
    start = capacity - BACKLOG
    q, k, v = step_inputs(shape, dtype=dtype, device=device)
    scale = shape[3] ** -0.5
    timing = dict(warmup=args.warmup, iters=args.iters)

    def baseline_step(cache):
        rewind(cache, start)
        keys, values = cache.update(k, v)
        return attention(q, keys, values, scale=scale)

    fp = make_cache("fp16", shape, dtype=dtype, device=device)
    fill(fp, shape, start + 1, dtype=dtype, device=device)
    fp_bytes, fp_nbytes = bytes_read(fp, start + 1), fp.nbytes
    kv = (fp.keys[:, :, : start + 1], fp.values[:, :, : start + 1])
    times = time_interleaved({"c": lambda fp=fp: baseline_step(fp),
                              "sdpa": lambda kv=kv: attention(q, *kv, scale=scale)}, device, **timing)
    c_ms, sdpa_ms = times["c"], times["sdpa"]
    del fp, kv
    name = "B={}, H={}, Hkv={}, D={}, T={}".format(*shape)
    label = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    rows = [f"| {name} | {label} | - | - | {c_ms:.3f} | - | - | - | {sdpa_ms:.4f} | - | - | - | "
            f"{fp_bytes / sdpa_ms / 1e6:.1f} | {fp_nbytes} | - |"]
    for precision in PRECISIONS[1:]:
        cache = make_cache(precision, shape, dtype=dtype, device=device)
        fill(cache, shape, start, dtype=dtype, device=device)

        def fused_step(cache=cache):
            rewind(cache, start)
            return cache.decode_attention(q, k, v, scale=scale)

        fused_step()  # the cache now holds start + 1 tokens: what the op alone reads
        times = time_interleaved({"a": fused_step, "b": lambda cache=cache: baseline_step(cache),
                                  "op": lambda cache=cache: cache.attend(q, scale=scale)}, device, **timing)
        error = (fused_step().float() - baseline_step(cache).float()).abs().max().item()
        a_ms, b_ms, op_ms = times["a"], times["b"], times["op"]
        read = bytes_read(cache, start + 1)
        rows.append(
            f"| {name} | {precision} | {a_ms:.3f} | {b_ms:.3f} | {c_ms:.3f} | {b_ms / a_ms:.2f}x | {c_ms / a_ms:.2f}x "
            f"| {op_ms:.4f} | {sdpa_ms:.4f} | {sdpa_ms / op_ms:.2f}x | {read / a_ms / 1e6:.1f} | "
            f"{read / op_ms / 1e6:.1f} | {fp_bytes / sdpa_ms / 1e6:.1f} | {cache.nbytes} | {error:.1e} |"
        )
        del cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def sweep_rows(args, *, dtype, device) -> list[str]:
    """Kernel configurations on the memory-bound shape (B=1, T=131072), K4V4 per channel and per token: the
    default, then the 5 fastest of token block x warps x stages x (splits x 1, 4, 16)."""
    from panformer_kernels.triton_quantized_attention import (
        default_config,
        quantized_decode_forward,
    )

    shape = (1, 32, 8, 128, 131072) if not args.tiny else TINY_SHAPES[0]
    q, _, _ = step_inputs(shape, dtype=dtype, device=device)
    rows = []
    for precision in ("K4V4", "K4V4@token"):
        cache = make_cache(precision, shape, dtype=dtype, device=device)
        fill(cache, shape, shape[4], dtype=dtype, device=device)
        keys, values = cache.key_store, cache.value_store
        n = keys.quantized_length
        base = default_config(tokens=n, programs_per_split=shape[0] * shape[2], key_axis=cache.key_axis,
                              group_size=keys.group_size)
        tensors = (q, keys.codes, keys.scale, keys.zero, values.codes, values.scale, values.zero)
        options = dict(n=n, key_bits=keys.bits, value_bits=values.bits, key_axis=cache.key_axis,
                       group_size=keys.group_size, v_dim=values.dim, scale=0.1)
        fns = {}
        for block_n in (32, 64, 128):
            for warps in (4, 8):  # 12 compiled variants per precision; splits are run-time values
                for stages in (2, 3):
                    for factor in (1, 4, 16):  # more splits: more programs in flight per SM
                        config = dict(block_n=block_n, splits=max(1, int(base["splits"] * factor)), num_warps=warps,
                                      num_stages=stages)
                        fns[str(config)] = partial(quantized_decode_forward, *tensors, config=config, **options)
        times = time_interleaved(fns, device, warmup=2, iters=args.iters)
        best = sorted(times.items(), key=lambda item: item[1])
        read = bytes_read(cache, n)
        default_ms = times.get(str(base))
        rows.append(f"| {precision} | default {base} | {default_ms if default_ms is None else f'{default_ms:.4f}'} | |")
        rows += [f"| {precision} | {config} | {ms:.4f} | {read / ms / 1e6:.0f} |" for config, ms in best[:5]]
        del cache
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small shapes and few iterations: a wiring check")
    parser.add_argument("--sweep", action="store_true", help="also time kernel configurations (CUDA)")
    parser.add_argument("--sweep-only", action="store_true", help="time only the kernel configurations (CUDA)")
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.tiny:
        args.iters, args.warmup = min(args.iters, 2), 1
    shapes = [] if args.sweep_only else TINY_SHAPES if args.tiny else SHAPES
    args.sweep = args.sweep or args.sweep_only

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()} ({platform.machine()})"
    lines = [
        "# Decode attention over a quantised KV cache: fused op vs dequantise + SDPA vs fp16 cache",
        "",
        f"Command: `python apps/bench/kv_decode.py {' '.join(sys.argv[1:])}`  ",
        f"Device: {where}; torch {torch.__version__}; triton {triton_version()}; cache and queries {args.dtype}.  ",
        f"One decode step (Lq = 1) over T - {BACKLOG} cached tokens; per-channel keys in groups of {GROUP_SIZE} "
        f"tokens unless `@token`; median of {args.iters} interleaved timed runs after {args.warmup} warm-up.",
        "",
        "Whole decode steps: (a) fused `decode_attention` (append + op); (b) today's `update` (append, dequantise "
        "all) + `attention`; (c) unquantised `KVCache` `update` + `attention`. Attention alone, nothing appended: "
        "op = `QuantizedKVCache.attend` (the fused op over the same cache), SDPA = `attention` over the "
        "unquantised cache's tensors. GB/s: cache bytes a step reads / time. Cache bytes: `nbytes` at capacity T. "
        "max abs(a-b): largest difference of the two outputs.",
        "",
        "| shape | cache | (a) fused ms | (b) today ms | (c) unquantised ms | b/a | c/a | op ms | SDPA ms | SDPA/op "
        "| (a) GB/s | op GB/s | SDPA GB/s | cache bytes | max abs(a-b) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in shapes:
        lines += shape_rows(shape, args, dtype=dtype, device=device)
        print(lines[-1], flush=True)
    if args.sweep and device.type == "cuda":
        lines += ["", "## Kernel configurations (the op's kernels alone, B=1, H=32, Hkv=8, D=128, T=131072)", "",
                  "| cache | config | ms | GB/s |", "|---|---|---:|---:|"]
        lines += sweep_rows(args, dtype=dtype, device=device)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
