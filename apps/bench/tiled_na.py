"""Neighbourhood attention on tokens in tile order (issue 18) next to today's raster-order kernel, Flex and
dense SDPA, on the speed table's shapes (apps/bench/speed.py; B=2, H=16, D=128, bf16):
1-D window 1023 on 16384, 2-D 15x15 on 128x128, 3-D 3x7x7 on 16x32x32 causal in time.

Contenders per case and mode (forward, forward + backward), timed interleaved in one run:

- ``raster kernel``: today's kernel, ``neighborhood_attention(...)`` on raster-order tensors;
- ``tiled, tile order``: ``tiled_neighborhood_attention`` on tensors already in tile order (a model that keeps
  its tokens in tile order across layers);
- ``tiled, raster + permute``: ``neighborhood_attention(..., tiled=True)``, the permutations in and out included;
- ``flex``: FlexAttention through our ``flex`` backend (raster order);
- ``dense sdpa``: SDPA with no mask over all L x L pairs; its time x the attended fraction is the
  speed-of-light column (what a dense-rate kernel would take for the attended pairs alone).

Effective TFLOP/s count attended pairs only (4·B·H·D·pairs forward, 3.5x that forward + backward). A
contender that fails (compile error, out of memory) is recorded in its cell and the run goes on. The
forward output of each tiled contender is compared with the raster kernel's (``max |diff|``).
``--sweep`` also times the tiled kernels (tile order) per tile / block configuration. ``--smoke`` dry-runs
the script on CPU: the op contenders run the ops' CPU path (reference math), the sweep runs the Triton
kernels in the interpreter, and Flex's missing CPU backward shows as a recorded failure.

    python apps/bench/tiled_na.py --sweep --out apps/bench/results/tiled-na-h100.md   # about 3 min on an H100
    python apps/bench/tiled_na.py --smoke --out /tmp/tiled-na.md                      # tiny, Triton interpreter, CPU
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timing import time_interleaved, triton_version  # apps/bench/timing.py

from panformer_kernels.neighborhood_attention import as_three_axes, neighborhood_attention
from shared_attention import attention
from shared_attention.masks import Neighborhood
from shared_attention.neighborhood import TileLayout, default_tile, tiled_neighborhood_attention

CONTENDERS = ("raster kernel", "tiled, tile order", "tiled, raster + permute", "flex", "dense sdpa")


@dataclass(frozen=True)
class Case:
    name: str
    mask: Neighborhood


def cases(smoke: bool) -> list[Case]:
    if smoke:
        return [
            Case("1-D 15 on 64", Neighborhood((64,), 15)),
            Case("2-D 5x5 on 16x16", Neighborhood((16, 16), 5)),
            Case("3-D 3x3x3 on 4x8x8, causal in time", Neighborhood((4, 8, 8), 3, causal=(True, False, False))),
        ]
    return [
        Case("1-D 1023 on 16384", Neighborhood((16384,), 1023)),
        Case("2-D 15x15 on 128x128", Neighborhood((128, 128), 15)),
        Case("3-D 3x7x7 on 16x32x32, causal in time", Neighborhood((16, 32, 32), (3, 7, 7), causal=(True, False, False))),
    ]


def sweep_configs(axes: int, smoke: bool) -> list[dict]:
    """(kernel, layout tile, own block, walked block, warps, stages) to try per grid dimensionality; the first
    forward and backward entries are the defaults. Backward entries serve the dq and the dk/dv kernel."""
    if smoke:
        table = {1: [("fwd", (32,), (32,), (16,), 4, 1), ("bwd", (32,), (32,), (16,), 4, 1)],
                 2: [("fwd", (4, 8), (4, 8), (2, 8), 4, 1), ("bwd", (4, 8), (2, 8), (4, 8), 4, 1)],
                 3: [("fwd", (1, 4, 8), (1, 4, 8), (1, 2, 8), 4, 1), ("bwd", (1, 4, 8), (1, 4, 8), (1, 4, 8), 4, 1)]}
    else:
        table = {
            1: [("fwd", (64,), (64,), (64,), 4, 2), ("fwd", (64,), (64,), (32,), 4, 2),
                ("fwd", (64,), (64,), (64,), 4, 3), ("fwd", (128,), (128,), (128,), 8, 2),
                ("bwd", (64,), (64,), (32,), 4, 2), ("bwd", (64,), (64,), (64,), 4, 2),
                ("bwd", (64,), (64,), (32,), 4, 3), ("bwd", (128,), (128,), (64,), 8, 2),
                ("bwd", (128,), (128,), (32,), 8, 2)],  # FlashAttention-2's dk/dv shape: 128 owned, 32 walked
            2: [("fwd", (8, 8), (8, 8), (8, 8), 4, 2), ("fwd", (8, 8), (8, 8), (4, 8), 4, 2),
                ("fwd", (8, 8), (8, 8), (8, 8), 4, 3), ("fwd", (16, 8), (16, 8), (8, 8), 8, 2),
                ("fwd", (8, 16), (8, 16), (4, 16), 8, 2),
                ("bwd", (8, 8), (8, 8), (4, 8), 4, 2), ("bwd", (8, 8), (8, 8), (8, 8), 4, 2),
                ("bwd", (8, 8), (8, 8), (2, 8), 4, 3), ("bwd", (16, 8), (16, 8), (4, 8), 4, 2)],
            3: [("fwd", (1, 8, 8), (1, 8, 8), (1, 4, 8), 4, 2), ("fwd", (1, 8, 8), (1, 8, 8), (1, 8, 8), 4, 2),
                ("fwd", (1, 8, 8), (1, 8, 8), (1, 2, 8), 4, 2), ("fwd", (1, 16, 8), (1, 16, 8), (1, 4, 8), 8, 2),
                ("fwd", (2, 8, 8), (2, 8, 8), (1, 4, 8), 8, 2),
                ("bwd", (1, 8, 8), (1, 8, 8), (1, 4, 8), 4, 2), ("bwd", (1, 8, 8), (1, 8, 8), (1, 2, 8), 4, 2),
                ("bwd", (1, 8, 8), (1, 8, 8), (1, 8, 8), 4, 2), ("bwd", (1, 16, 8), (1, 16, 8), (1, 4, 8), 4, 2)],
        }
    pad = lambda shape: (1,) * (3 - len(shape)) + shape  # noqa: E731  (3 axes, as the launchers take them)
    return [dict(kernel=kernel, tile=tile, block=pad(own), walk=pad(walk), num_warps=w, num_stages=s)
            for kernel, tile, own, walk, w, s in table[axes]]


def attended_pairs(mask: Neighborhood, batch: int) -> int:
    """Query-key pairs the mask allows: the product over axes of each axis's own count (the mask is one per axis)."""
    per_axis = [
        int(Neighborhood((n,), k, d, c, s).dense(n, n).sum())
        for n, k, d, c, s in zip(mask.grid, mask.kernel_size, mask.dilation, mask.causal, mask.stride, strict=True)
    ]
    return batch * math.prod(per_axis)


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''}"


def time_robustly(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, iters: int
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms per contender, interleaved; a contender that fails is dropped with its error."""
    failed: dict[str, str] = {}
    working = {}
    for name, fn in fns.items():  # one call each first: compile, and find the ones that fail
        try:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            working[name] = fn
        except Exception as error:  # recorded in the table; the run goes on
            failed[name] = _failure(error)
            print(f"  {name} failed: {failed[name]}", flush=True)
            traceback.print_exc(limit=3)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    try:
        return time_interleaved(working, device, warmup=warmup, iters=iters), failed
    except Exception:  # a late failure: time the rest one by one
        times = {}
        for name, fn in working.items():
            try:
                times[name] = time_interleaved({name: fn}, device, warmup=warmup, iters=iters)[name]
            except Exception as error:
                failed[name] = _failure(error)
        return times, failed


def run_case(case: Case, args, device: torch.device, dtype: torch.dtype, training: bool) -> dict:
    mask = case.mask
    length = mask.num_tokens
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.heads, length, args.head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(4))
    layout = TileLayout(mask.grid, default_tile(mask.grid), mask.dilation)
    tq, tk, tv, t_grad = (layout.to_tiles(t).contiguous() for t in (q, k, v, grad_out))
    raster_leaves, tiled_leaves = (q, k, v), (tq, tk, tv)
    if training:
        raster_leaves = tuple(t.requires_grad_() for t in raster_leaves)
        tiled_leaves = tuple(t.requires_grad_() for t in tiled_leaves)
    options = dict(grid=mask.grid, kernel_size=mask.kernel_size, dilation=mask.dilation, causal=mask.causal,
                   stride=mask.stride)

    def step(fn: Callable[[], torch.Tensor], leaves, grad) -> Callable[[], object]:
        if not training:
            return fn
        return lambda: torch.autograd.grad(fn(), leaves, grad)

    fns = {
        "raster kernel": step(lambda: neighborhood_attention(q, k, v, **options), raster_leaves, grad_out),
        "tiled, tile order": step(
            lambda: tiled_neighborhood_attention(tq, tk, tv, layout, mask.kernel_size, mask.stride, mask.causal),
            tiled_leaves, t_grad),
        "tiled, raster + permute": step(lambda: neighborhood_attention(q, k, v, **options, tiled=True),
                                        raster_leaves, grad_out),
        "flex": step(lambda: attention(q, k, v, mask=mask, backend="flex"), raster_leaves, grad_out),
        "dense sdpa": step(lambda: F.scaled_dot_product_attention(q, k, v), raster_leaves, grad_out),
    }
    pairs = attended_pairs(mask, args.batch)
    row = {"case": case.name, "mode": "fwd+bwd" if training else "fwd", "fraction": pairs / (args.batch * length**2),
           "flops": 4 * args.heads * args.head_dim * pairs * (3.5 if training else 1.0)}
    with torch.set_grad_enabled(training):
        row["times"], row["failed"] = time_robustly(fns, device, warmup=args.warmup, iters=args.iters)
    if not training:  # the tiled outputs against today's kernel (a wrong kernel shows here, not only as a time)
        with torch.no_grad():
            row["diff"] = {}
            try:
                reference = neighborhood_attention(q, k, v, **options).float()
                tiled = layout.from_tiles(tiled_neighborhood_attention(tq, tk, tv, layout, mask.kernel_size,
                                                                       mask.stride, mask.causal))
                permuted = neighborhood_attention(q, k, v, **options, tiled=True)
                row["diff"] = {"tiled, tile order": (tiled.float() - reference).abs().max().item(),
                               "tiled, raster + permute": (permuted.float() - reference).abs().max().item()}
            except Exception as error:
                print(f"  output comparison failed: {_failure(error)}", flush=True)
    return row


def sweep_case(case: Case, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The tiled kernels (tile order) per configuration: the forward, or the backward (dq + dk/dv) alone."""
    from panformer_kernels.triton_tiled_neighborhood_attention import (
        tiled_neighborhood_backward,
        tiled_neighborhood_forward,
    )

    mask = case.mask
    _, kernel3, _, causal3, stride3 = as_three_axes(mask.grid, mask.kernel_size, mask.dilation, mask.causal,
                                                    mask.stride)
    flops = 4 * args.heads * args.head_dim * attended_pairs(mask, args.batch)
    rows = []
    for entry in sweep_configs(len(mask.grid), args.smoke):
        config = {key: entry[key] for key in ("block", "walk", "num_warps", "num_stages")}
        layout = TileLayout(mask.grid, entry["tile"], mask.dilation)
        g = torch.Generator(device=device).manual_seed(0)
        shape = (args.batch, args.heads, layout.length, args.head_dim)
        q, k, v, grad_out = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(4))
        options = dict(layout=layout, kernel_size=tuple(kernel3), causal=tuple(causal3), stride=tuple(stride3),
                       scale=args.head_dim**-0.5)
        name = entry["kernel"]
        try:
            if name == "fwd":
                fn = lambda o=options, c=config, t=(q, k, v): tiled_neighborhood_forward(*t, **o, config=c)  # noqa: E731
            else:  # the forward's output and log-sum-exp (default forward configuration) feed the backward
                out, lse = tiled_neighborhood_forward(q, k, v, **options)
                fn = lambda o=options, c=config, t=(grad_out, q, k, v, out, lse): tiled_neighborhood_backward(  # noqa: E731
                    *t, **o, config=c)
            times, failed = time_robustly({name: fn}, device, warmup=args.warmup, iters=args.iters)
        except Exception as error:  # the backward's forward failed: recorded, the sweep goes on
            times, failed = {}, {name: _failure(error)}
        rows.append(dict(case=case.name, entry=entry, times=times, failed=failed,
                         flops=flops * (1.0 if name == "fwd" else 2.5)))
        print("  sweep", entry, {n: round(t, 3) for n, t in times.items()}, failed or "", flush=True)
    return rows


def _cell(row: dict, name: str, flops: float) -> str:
    if name in row["failed"]:
        return f"failed ({row['failed'][name]})"
    if name not in row["times"]:
        return "–"
    ms = row["times"][name]
    return f"{ms:.3f} ({flops / ms / 1e9:.0f})"


def render(rows: list[dict], sweeps: list[dict], args, device: torch.device, command: str) -> str:
    where = (f"GPU: {torch.cuda.get_device_name()}" if device.type == "cuda"
             else "CPU, Triton interpreter (smoke: tiny shapes, times mean nothing)")
    lines = [
        "# Neighbourhood attention in tile order (issue 18)",
        "",
        f"- command: `{command}`",
        f"- {where}; torch {torch.__version__}; triton {triton_version()}; "
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- B={args.batch}, H={args.heads}, D={args.head_dim}, {args.dtype}; median of {args.iters} timings after "
        f"{args.warmup} warm-up calls, contenders interleaved; cells: ms (effective TFLOP/s over attended pairs)",
        "- speed of light: dense SDPA's time x the attended fraction; ratios are times (below 1: the tiled "
        "kernel on tile-ordered tensors is faster)",
        "",
        "| case | mode | attended | speed of light | raster kernel | tiled, tile order | tiled, raster + permute "
        "| flex | dense sdpa | tiled / raster | tiled / flex | tiled / light | max diff (tile order, permute) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, flops = row["times"], row["flops"]
        dense_flops = flops / row["fraction"]
        light = f"{t['dense sdpa'] * row['fraction']:.3f}" if "dense sdpa" in t else "–"
        ratio = lambda other, t=t: (f"{t['tiled, tile order'] / t[other]:.2f}"  # noqa: E731
                                    if "tiled, tile order" in t and other in t else "–")
        light_ratio = (f"{t['tiled, tile order'] / (t['dense sdpa'] * row['fraction']):.2f}"
                       if "tiled, tile order" in t and "dense sdpa" in t else "–")
        diff = row.get("diff", {})
        diffs = ", ".join(f"{diff[n]:.1e}" for n in ("tiled, tile order", "tiled, raster + permute") if n in diff)
        cells = [_cell(row, name, flops) for name in CONTENDERS[:-1]] + [_cell(row, "dense sdpa", dense_flops)]
        lines.append(f"| {row['case']} | {row['mode']} | {row['fraction']:.2%} | {light} | {' | '.join(cells)} | "
                     f"{ratio('raster kernel')} | {ratio('flex')} | {light_ratio} | {diffs or '–'} |")
    if sweeps:
        lines += ["", "## Tiled kernel configurations (tile order; bwd: the dq and dk/dv kernels, 2.5x the forward's "
                  "FLOPs; the first fwd and bwd row of a case are the defaults)", "",
                  "| case | kernel | layout tile | own block | walked block | warps | stages | ms (TFLOP/s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in sweeps:
            e = row["entry"]
            lines.append(f"| {row['case']} | {e['kernel']} | {e['tile']} | {e['block']} | {e['walk']} | "
                         f"{e['num_warps']} | {e['num_stages']} | {_cell(row, e['kernel'], row['flops'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--sweep", action="store_true", help="also time tile / block configurations of the tiled kernels")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads the variable when kernels are decorated: run again in a process that has it from the start.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        sys.exit(subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                                env=env).returncode)
    if args.smoke:
        args.batch, args.heads, args.head_dim, args.dtype, args.warmup, args.iters = 1, 2, 16, "float32", 0, 1
    elif not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels: run it on a GPU machine (or --smoke on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = getattr(torch, args.dtype)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows, sweeps = [], []

    def write() -> None:  # after every case: a cut-short run keeps its rows
        if args.out:
            with open(args.out, "w") as f:
                f.write(render(rows, sweeps, args, device, command))

    selected = [case for case in cases(args.smoke) if not args.only or args.only in case.name]
    for mode in args.modes.split(","):
        for case in selected:
            row = run_case(case, args, device, dtype, training=mode == "fwd+bwd")
            rows.append(row)
            print(row["mode"], row["case"], {n: round(t, 3) for n, t in row["times"].items()}, row["failed"] or "",
                  row.get("diff", ""), flush=True)
            write()
    if args.sweep:
        for case in selected:
            sweeps += sweep_case(case, args, device, dtype)
            write()
    write()
    print(render(rows, sweeps, args, device, command))


if __name__ == "__main__":
    main()
