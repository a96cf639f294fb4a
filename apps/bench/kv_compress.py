"""KV-cache compression on the music model: L2-norm key eviction and a KVTuner-style per-layer precision
search, next to the fp16 cache and KIVI-8 (K8V8, per-channel keys).

A trained Multitrack Music Transformer scores held-out pieces by incremental decoding (one event per step
through per-layer caches; `kv_quant.py`'s method). Configurations:

- `fp32`: the plain cache (must equal the cache-free pass), `fp16`: the same cache stored in half precision;
- `KIVI-8`: QuantizedKVCache K8V8, keys per channel in groups of 32 (KIVI), values per token;
- `K4V4`, `K4V2`, `K2V4`: one pair for every layer (per-channel keys), the uniform choices at 4 and 3 bits;
- `KVTuner@b`: per-layer (key, value) pairs searched on the VALIDATION split (sensitivity of each layer to
  each candidate pair, Pareto pruning, exact choice under a mean of b bits per element), written as a spec
  file (`--spec-dir`) that `shared_attention.kv_tuner.caches_from_spec` reads back for the test run;
- `L2 keep p%`: L2NormEvictionCache at a budget of p% of the context (fp16 storage), keys of largest
  norm evicted; `L2 keep p%, layer 0 full`: the first layer left uncompressed (the paper skips early layers).

Reported on the TEST split: NLL per event, its change against fp16 and against KIVI-8, the bytes the caches
keep for one sequence at full context, scoring throughput (events/s, batched) and one-sequence sampling
speed (events/s).

    .venv/bin/panformer-music train --recipe demo --out runs/kvc-music
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/kv_compress.py --checkpoint runs/kvc-music \
        --out apps/bench/results/kv-compress-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path
from kv_quant import IncrementalDecoder, load_mmt_run, sample_speed, score
from torch import Tensor

from panformer.engine.files import write_text_atomic
from panformer.music.model import CompoundTransformer
from shared_attention import KVCache, KVPrecision, L2NormEvictionCache, quantized_caches
from shared_attention.kv_tuner import (
    caches_from_spec,
    search_layer_precisions,
    write_precision_spec,
)


class _Float32Out:
    """Stored in fp16, handed to attention in fp32 (the model runs in fp32 on CPU)."""

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = super().update(k, v)
        return keys.float(), values.float()


class Float16KVCache(_Float32Out, KVCache):
    pass


class Float16L2Cache(_Float32Out, L2NormEvictionCache):
    pass


def factories(model: CompoundTransformer, *, tuned: dict[float, Path], uniform: list[str], keep: list[float],
              group_size: int) -> dict[str, Callable[[int], list]]:
    """Configuration name -> batch size -> fresh per-layer caches."""
    depth, heads, context, width = len(model.blocks), model.num_heads, model.max_len, model.head_dim
    plain = lambda dtype: lambda n: [KVCache(n, heads, context, width, dtype=dtype) for _ in range(depth)]  # noqa: E731
    out = {
        "fp32": plain(torch.float32),
        "fp16": lambda n: [Float16KVCache(n, heads, context, width, dtype=torch.float16) for _ in range(depth)],
        "KIVI-8": lambda n: quantized_caches("K8V8", num_layers=depth, batch_size=n, num_kv_heads=heads,
                                             max_len=context, head_dim=width, group_size=group_size),
    }
    for spec in uniform:  # one pair for every layer: what the search must beat at the same bits
        out[spec] = lambda n, spec=spec: quantized_caches(spec, num_layers=depth, batch_size=n, num_kv_heads=heads,
                                                          max_len=context, head_dim=width, group_size=group_size)
    for bits, path in tuned.items():
        out[f"KVTuner@{bits:g}"] = lambda n, path=path: caches_from_spec(
            path, num_layers=depth, batch_size=n, num_kv_heads=heads, max_len=context, head_dim=width)
    for fraction in keep:
        budget = max(1, round(fraction * context))

        def evicting(n, budget=budget, skip_first=False):
            caches = [Float16L2Cache(n, heads, budget, width, dtype=torch.float16) for _ in range(depth)]
            if skip_first:
                caches[0] = Float16KVCache(n, heads, context, width, dtype=torch.float16)
            return caches

        out[f"L2 keep {fraction:.0%}"] = evicting
        out[f"L2 keep {fraction:.0%}, layer 0 full"] = lambda n, f=evicting: f(n, skip_first=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/kvc-music"), help="a trained music run (MMT)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 3.0],
                        help="KVTuner: mean bits per cached element (K4V4 = 4)")
    parser.add_argument("--uniform", nargs="+", default=["K4V4", "K4V2", "K2V4"],
                        help="uniform pairs shown beside the searched ones (same mean bits)")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25], help="L2 eviction: kept share")
    parser.add_argument("--calibration-windows", type=int, default=8, help="validation windows the search decodes")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sample-events", type=int, default=256)
    parser.add_argument("--spec-dir", type=Path, default=None, help="where the searched specs go (default: --checkpoint)")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/kv-compress-cpu.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_mmt_run(args.checkpoint)
    model, task, info, recipe = loaded.model, loaded.task, loaded.info, loaded.recipe
    splits = task.load_splits(recipe)
    calibration = [splits.val[i] for i in range(min(len(splits.val), args.calibration_windows))]
    test = [splits.test[i] for i in range(len(splits.test))]
    depth, heads, context, width = len(model.blocks), model.num_heads, model.max_len, model.head_dim

    evaluated: dict[str, float] = {}  # the budgets share their sensitivity runs

    def calibration_nll(config: list[KVPrecision]) -> float:
        key = ",".join(map(str, config))
        if key not in evaluated:
            make = lambda n: quantized_caches(config, num_layers=depth, batch_size=n, num_kv_heads=heads,  # noqa: E731
                                              max_len=context, head_dim=width, group_size=args.group_size)
            evaluated[key] = score(task, IncrementalDecoder(model, make), calibration, info,
                                   batch_size=args.batch_size)["nll"]
        return evaluated[key]

    spec_dir = args.spec_dir or args.checkpoint
    tuned, searches = {}, {}
    for bits in args.budgets:
        tic = time.perf_counter()
        result = search_layer_precisions(calibration_nll, num_layers=depth, budget_bits=bits,
                                         progress=lambda m, b=bits: print(f"KVTuner@{b:g} {m}", flush=True))
        tuned[bits] = spec_dir / f"kv-precision-{bits:g}bit.json"
        write_precision_spec(tuned[bits], result, key_axis="channel", group_size=args.group_size)
        searches[bits] = (result, time.perf_counter() - tic)

    rows = []
    events = sum(len(w["codes"]) - 1 for w in test)
    full_pass = score(task, model, test, info, batch_size=args.batch_size)
    for name, make in factories(model, tuned=tuned, uniform=args.uniform, keep=args.keep, group_size=args.group_size).items():
        tic = time.perf_counter()
        metrics = score(task, IncrementalDecoder(model, make), test, info, batch_size=args.batch_size)
        seconds = time.perf_counter() - tic
        speed, _ = sample_speed(model, make, info, events=args.sample_events, seed=0)
        nbytes = sum(c.nbytes for c in make(1))
        rows.append((name, metrics["nll"], nbytes, events / seconds, speed))
        print(f"{name}: nll {metrics['nll']:.4f}, {nbytes} bytes, {events / seconds:.0f} scored/s, "
              f"{speed:.0f} sampled/s", flush=True)

    nll = {name: value for name, value, *_ in rows}
    fp16_bytes = next(b for name, _, b, *_ in rows if name == "fp16")
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    lines = [
        "# KV-cache compression on the music model: L2-norm eviction and KVTuner-style precision search (CPU)",
        "",
        f"Command: `OMP_NUM_THREADS={threads} .venv/bin/python apps/bench/kv_compress.py --checkpoint "
        f"{args.checkpoint}`, after `.venv/bin/panformer-music train --recipe demo --out {args.checkpoint}`.  ",
        f"Hardware: {cpu_name()} ({platform.machine()}, {os.cpu_count()} cores), {threads} math thread(s), shared "
        f"with other jobs during this run; torch {torch.__version__}.  ",
        f"Model: the `demo` MMT trained briefly ({depth} layers, {heads} heads x {width} channels, {context}-event "
        "context, RoPE), selected on validation NLL: a tiny model, not MMT's paper size.  ",
        f"Data: searched on {len(calibration)} validation windows; reported on the test split ({len(test)} windows, "
        f"{events} events), scored by incremental decoding (one event per step through the caches).  ",
        f"Check: the fp32 cache gives NLL {nll['fp32']:.5f}, the cache-free full pass {full_pass['nll']:.5f}.  ",
        f"Total wall time: {time.perf_counter() - started:.0f} s.",
        "",
        "NLL in nats per event (sum over the six fields). Cache bytes: what the caches keep for one sequence at "
        "full context (codes, scales, zero points, residual key group; eviction: its budget in fp16). Scored: "
        f"test events per second of incremental scoring (batch {args.batch_size}); sampled: one sequence, "
        f"{args.sample_events} events.",
        "",
        "| config | NLL/event | Δ vs fp16 | Δ vs KIVI-8 | cache bytes | vs fp16 | scored events/s | sampled events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, value, nbytes, scored, sampled in rows:
        lines.append(f"| {name} | {value:.4f} | {value - nll['fp16']:+.4f} | {value - nll['KIVI-8']:+.4f} | {nbytes} | "
                     f"{nbytes / fp16_bytes:.2f}x | {scored:.0f} | {sampled:.0f} |")
    lines += ["", "KVTuner searches (validation NLL; sensitivity = the NLL change with one layer at a pair, the "
              "others in full precision):", ""]
    for bits, (result, seconds) in searches.items():
        lines.append(f"- budget {bits:g} bits: chose `{result.spec}` (mean {result.average_bits:g} bits), validation "
                     f"NLL {result.baseline_loss:.4f} -> {result.loss:.4f} ({result.loss - result.baseline_loss:+.4f}), "
                     f"{seconds:.0f} s; Pareto fronts per layer: "
                     + "; ".join(f"layer {i}: {', '.join(front)}" for i, front in enumerate(result.front)))
    if searches:
        result = next(iter(searches.values()))[0]
        lines += ["", "| layer | " + " | ".join(result.sensitivity[0]) + " |",
                  "|---" * (1 + len(result.sensitivity[0])) + "|"]
        for i, row in enumerate(result.sensitivity):
            lines.append(f"| {i} | " + " | ".join(f"{v:+.4f}" for v in row.values()) + " |")
    lines.append("")
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
