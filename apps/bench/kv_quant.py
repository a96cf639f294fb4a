"""KV-cache quantisation on the music model: the accuracy, memory and speed cost of K8V8 ... K2V2.

A trained Multitrack Music Transformer (the `demo` recipe: 2 layers, 4 heads of 24 channels, 256-event
context) scores the held-out test pieces by *incremental decoding*: every window is fed one event at a
time through per-layer caches, and the logits of each step give the per-field NLL of the next event
(the same masks and weighting as the training loss). Configurations are per-layer key/value precision
pairs (KVTuner-style), keys quantised per channel in groups of 32 tokens (KIVI) unless `@token`, values
per token; `fp` is the plain cache, which must equal the cache-free full pass. Memory is the bytes the
caches keep for one sequence at the model's full context; speed is one-sequence sampling with the
music generator (events/s, same seed), with the first event where the sample departs from fp's.

    .venv/bin/panformer-music train --recipe demo --out runs/kvq-music
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/kv_quant.py --checkpoint runs/kvq-music \
        --out apps/bench/results/kv-quant-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path
from torch import Tensor, nn

from panformer.engine.cli import LoadedModel, load_model
from panformer.engine.files import write_text_atomic
from panformer.music.data import collate, header_codes
from panformer.music.domain import MusicDomain
from panformer.music.generate import FieldSampling, generate
from panformer.music.model import CompoundTransformer
from panformer.music.representation import FIELDS, instrument_code
from shared_attention import KVCache, KVPrecision, quantized_caches

DEFAULT_CONFIGS = (
    "fp", "K8V8", "K8V4", "K4V8", "K4V4", "K4V4@token", "K4V2", "K2V4", "K2V2", "K2V2@token",
    "K8V8,K2V2", "K2V2,K8V8",
)


def load_mmt_run(checkpoint: Path) -> LoadedModel:
    """A trained MMT music run on the CPU, or a one-line exit naming the folder and the fix."""
    if not (checkpoint / "checkpoints").is_dir():
        raise SystemExit(f"--checkpoint {checkpoint}: no run folder; train one with "
                         f"`.venv/bin/panformer-music train --recipe demo --out {checkpoint}`")
    loaded = load_model(MusicDomain(), checkpoint, torch.device("cpu"))
    if loaded.info["representation"] != "mmt":
        raise SystemExit(f"--checkpoint {checkpoint}: needs an MMT model, this one is {loaded.info['representation']}")
    return loaded


def cache_factory(model: CompoundTransformer, config: str, *, group_size: int) -> Callable[[int], list]:
    """`config` ("K8V4", "K4V4@token", "K8V8,K2V2" per layer, "fp") -> batch size -> fresh caches."""
    spec, _, axis = config.partition("@")
    depth = len(model.blocks)

    def make(batch_size: int) -> list:
        if spec == "fp":
            return [KVCache(batch_size, model.num_heads, model.max_len, model.head_dim) for _ in range(depth)]
        return quantized_caches(spec, num_layers=depth, batch_size=batch_size, num_kv_heads=model.num_heads,
                                max_len=model.max_len, head_dim=model.head_dim, key_axis=axis or "channel",
                                group_size=group_size)

    return make


class IncrementalDecoder(nn.Module):
    """Wraps the model so that `forward(codes)` runs event by event through fresh caches: the
    task's loss then scores exactly what decoding would see."""

    def __init__(self, model: CompoundTransformer, make_caches: Callable[[int], list]) -> None:
        super().__init__()
        self.model, self.make_caches = model, make_caches

    def forward(self, codes: Tensor) -> list[Tensor]:
        caches = self.make_caches(codes.shape[0])
        steps = [self.model(codes[:, t : t + 1], caches=caches) for t in range(codes.shape[1])]
        return [torch.cat([step[f] for step in steps], dim=1) for f in range(len(steps[0]))]


@torch.no_grad()
def score(task, model: nn.Module, windows: Sequence[dict], info: dict, *, batch_size: int) -> dict[str, float]:
    """Per-field NLL of `windows` under `model` (the task's loss and metrics)."""
    metrics = task.metrics(info)
    for start in range(0, len(windows), batch_size):
        batch = collate(list(windows[start : start + batch_size]))
        _, outputs = task.loss(model, batch)
        metrics.update(batch, outputs)
    return metrics.compute()


def sample_speed(model: CompoundTransformer, make_caches, info: dict, *, events: int, seed: int) -> tuple[float, np.ndarray]:
    """Events per second of one sampled sequence with these caches, and the sampled codes."""
    model.new_caches = lambda batch_size, *, device, dtype=None: make_caches(batch_size)  # this instance only
    try:
        allowed = {instrument_code(n) for n in info["instruments"]}
        result = generate(model, header_codes(info["instruments"]), max_events=events, seed=seed,
                          sampling={f: FieldSampling(top_p=0.9) for f in FIELDS}, allowed_instruments=allowed,
                          may_end=False, max_beat_jump=1, end_beat=10**6)
    finally:
        del model.new_caches
    return (len(result.codes) - result.prompt_length) / result.seconds, result.codes



def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    n = min(len(a), len(b))
    diff = np.nonzero((a[:n] != b[:n]).any(-1))[0]
    if len(diff):
        return str(int(diff[0]))
    return "none" if len(a) == len(b) else str(n)


def total_bits(spec: str) -> int:
    """Key plus value bits of a precision pair (full precision counted as 16)."""
    pair = KVPrecision.parse(spec)
    return (pair.key_bits or 16) + (pair.value_bits or 16)


def findings(rows: list, fp_metrics: dict, model: CompoundTransformer, group_size: int) -> list[str]:
    """Sentences read off the table: key axis, layer sensitivity, the residual's share of the bytes."""
    by_name = {config: (m, nbytes) for config, m, nbytes, *_ in rows}
    delta = lambda name: by_name[name][0]["nll"] - fp_metrics["nll"]  # noqa: E731
    out = []
    for name in by_name:
        if "@" not in name and f"{name}@token" in by_name and name != "fp":
            out.append(f"- {name}: per-channel keys cost {delta(name):+.4f} nats/event, per-token keys "
                       f"{delta(name + '@token'):+.4f}.")
        layers = name.split(",")
        swapped = ",".join(reversed(layers))
        if len(layers) == 2 and swapped in by_name and name < swapped:  # once per pair
            # The layer given fewer bits in `name`; if `name` costs more, that layer is the sensitive one.
            low = min(range(2), key=lambda i: total_bits(layers[i]))
            sensitive = low if delta(name) > delta(swapped) else 1 - low
            out.append(f"- Per layer: {name} costs {delta(name):+.4f}, {swapped} {delta(swapped):+.4f}: layer "
                       f"{sensitive} is the one that needs the precision.")
    residual = len(model.blocks) * model.num_heads * group_size * model.head_dim * 4
    out.append(f"- The per-channel rows include the fp32 residual key group ({residual} bytes, {group_size} tokens "
               "per layer), a fixed cost that a longer context amortises.")
    return out


def paper_size_memory(configs: Sequence[str], group_size: int) -> list[str]:
    """Cache bytes per sequence at MMT's paper size (6 layers, 8 heads x 64, 1024 events), for scale."""
    layers, heads, context, head_dim = 6, 8, 1024, 64
    fp32 = layers * KVCache(1, heads, context, head_dim).nbytes
    out = [f"Memory at MMT's paper size ({layers} layers, {heads} heads x {head_dim}, {context}-event context), "
           "one sequence:", "", "| config | cache bytes | vs fp16 |", "|---|---|---|",
           f"| fp32 | {fp32} | 2.00x |", f"| fp16 | {fp32 // 2} | 1.00x |"]
    for config in configs:
        spec, _, axis = config.partition("@")
        if spec == "fp" or "," in spec:
            continue
        nbytes = sum(c.nbytes for c in quantized_caches(
            spec, num_layers=layers, batch_size=1, num_kv_heads=heads, max_len=context, head_dim=head_dim,
            key_axis=axis or "channel", group_size=group_size))
        out.append(f"| {config} | {nbytes} | {2 * nbytes / fp32:.2f}x |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/kvq-music"), help="a trained music run (MMT)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="precision pairs: K8V4, K4V4@token (per-token keys), K8V8,K2V2 (one per layer), fp")
    parser.add_argument("--group-size", type=int, default=32, help="tokens per per-channel key group")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-events", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/kv-quant-cpu.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_mmt_run(args.checkpoint)
    model, task, info, recipe = loaded.model, loaded.task, loaded.info, loaded.recipe
    test = task.load_splits(recipe).test
    windows = [test[i] for i in range(len(test))]
    events = sum(len(w["codes"]) - 1 for w in windows)

    full_pass = score(task, model, windows, info, batch_size=args.batch_size)
    rows, fp_sample = [], None
    for config in args.configs:
        make = cache_factory(model, config, group_size=args.group_size)
        tic = time.perf_counter()
        metrics = score(task, IncrementalDecoder(model, make), windows, info, batch_size=args.batch_size)
        decode_seconds = time.perf_counter() - tic
        speed, sample = sample_speed(model, make, info, events=args.sample_events, seed=0)
        fp_sample = sample if config == "fp" else fp_sample
        nbytes = sum(c.nbytes for c in make(1))
        rows.append((config, metrics, nbytes, decode_seconds, speed, sample))
        print(f"{config}: nll {metrics['nll']:.4f}, {nbytes} bytes, {speed:.0f} events/s", flush=True)

    fp_metrics = next((m for c, m, *_ in rows if c == "fp"), full_pass)
    fp32_bytes = sum(KVCache(1, model.num_heads, model.max_len, model.head_dim).nbytes for _ in model.blocks)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    fields = ", ".join(f"{f}" for f in FIELDS)
    lines = [
        "# KV-cache quantisation: accuracy, memory and speed on the music model (CPU)",
        "",
        f"Command: `OMP_NUM_THREADS={threads} .venv/bin/python apps/bench/kv_quant.py --checkpoint {args.checkpoint}` "
        f"(group size {args.group_size}, {args.sample_events} sampled events), after "
        f"`.venv/bin/panformer-music train --recipe demo --out {args.checkpoint}`.  ",
        f"Hardware: {cpu_name()} ({platform.machine()}, {os.cpu_count()} cores), {threads} math thread(s), "
        f"shared with other jobs during this run; torch {torch.__version__}.  ",
        f"Model: the `demo` MMT ({len(model.blocks)} layers, {model.num_heads} heads x {model.head_dim} channels, "
        f"{model.max_len}-event context, RoPE), selected on validation NLL.  ",
        f"Data: the test split ({len(test.pieces)} held-out Bach chorales, {len(windows)} windows, {events} scored "
        f"events), scored by incremental decoding (one event per step through the caches).  ",
        f"Check: the full-precision cache gives NLL {fp_metrics['nll']:.5f}, the cache-free full pass "
        f"{full_pass['nll']:.5f}.  ",
        f"Total wall time: {time.perf_counter() - started:.0f} s.",
        "",
        f"NLL in nats per event (sum over fields) and per field ({fields}), mean over the events where the "
        "field applies. Cache bytes: what the caches keep for one sequence at full context (codes, fp16 "
        f"scales and zero points, the fp32 residual key group); fp32 = {fp32_bytes} bytes, fp16 would be "
        f"{fp32_bytes // 2}. Decode: seconds to score the test set event by event (batch {args.batch_size}); "
        "sampling: one sequence, events/s, and the first event where the sample differs from fp's (same seed).",
        "",
        "| config | NLL/event | ΔNLL vs fp | " + " | ".join(FIELDS) + " | cache bytes | vs fp16 | "
        "decode s | sampling events/s | sample departs at |",
        "|---" * (8 + len(FIELDS)) + "|",
    ]
    for config, m, nbytes, decode_seconds, speed, sample in rows:
        delta = m["nll"] - fp_metrics["nll"]
        per_field = " | ".join(f"{m[f'nll_{f}']:.4f}" for f in FIELDS)
        departs = "-" if config == "fp" or fp_sample is None else first_difference(sample, fp_sample)
        lines.append(
            f"| {config} | {m['nll']:.4f} | {delta:+.4f} ({100 * delta / fp_metrics['nll']:+.2f}%) | {per_field} | "
            f"{nbytes} | {2 * nbytes / fp32_bytes:.2f}x | {decode_seconds:.1f} | {speed:.0f} | {departs} |"
        )
    lines += ["", *findings(rows, fp_metrics, model, args.group_size)]
    lines += ["", *paper_size_memory(args.configs, args.group_size)]
    lines += [
        "",
        "`@token`: keys quantised per token (like values) instead of per channel. `K8V8,K2V2`: layer 0 at K8V8, "
        "layer 1 at K2V2 (and the reverse): which layer tolerates low precision (KVTuner's per-layer pairs).",
        "Speed: the quantised cache dequantises every cached key and value on each step in plain PyTorch (no "
        "fused dequantise-attention kernel), so on CPU it costs time rather than saving it; the gain is memory.",
        "",
    ]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
