"""Our attention next to what PyTorch ships, on the cases of the kernel issue's speed table.

Each case is timed through the plain PyTorch call a user would write (SDPA, SDPA with a dense mask,
FlexAttention through our ``flex`` backend) and through ours: ``attention(..., backend="auto")``
and, where one exists, our kernel by name. Effective TFLOP/s count attended pairs only
(4·B·H·D·pairs forward, 3.5x that forward + backward). Ratios are taken within this one run.

    python apps/bench/speed.py --out apps/bench/results/speed-h200.md      # B=2, H=16, D=128, bf16
    python apps/bench/speed.py --length 1024 --grid 16 --kernel 5          # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timing import time_interleaved, time_ms, triton_version  # apps/bench/timing.py

from shared_attention import attention, explain
from shared_attention.masks import Causal, Mask, Neighborhood, SlidingWindow


@dataclass
class Case:
    name: str
    length: int
    mask: Mask | None
    plain: str  # the PyTorch call we compare against: "sdpa", "sdpa causal", "sdpa dense mask"
    ours: tuple[str, ...]  # backends of ours timed by name, besides "auto"


def cases(length: int, window: int, grid: int, kernel: int, kernel_1d: int) -> list[Case]:
    return [
        Case("no mask", length, None, "sdpa", ()),
        Case("causal", length, Causal(), "sdpa causal", ("flex",)),
        Case(f"causal sliding window {window}", length, SlidingWindow(window), "sdpa dense mask", ("flex",)),
        Case(
            f"1-D neighbourhood {kernel_1d} on {length}",
            length,
            Neighborhood((length,), kernel_1d),
            "sdpa dense mask",
            ("flex", "neighborhood"),
        ),
        Case(
            f"2-D neighbourhood {kernel}x{kernel} on {grid}x{grid}",
            grid * grid,
            Neighborhood((grid, grid), kernel),
            "sdpa dense mask",
            ("flex", "neighborhood"),
        ),
        Case(
            "3-D neighbourhood 3x7x7 on 16x32x32, causal in time",
            16 * 32 * 32,
            Neighborhood((16, 32, 32), (3, 7, 7), causal=(True, False, False)),
            "sdpa dense mask",
            ("flex", "neighborhood"),
        ),
    ]


def attended_pairs(case: Case, batch: int) -> int:
    if case.mask is None:
        return batch * case.length**2
    if isinstance(case.mask, Neighborhood):  # causal axes see fewer keys at the start: count them
        return batch * int(case.mask.dense(case.length, case.length, device="cuda").sum())
    if isinstance(case.mask, SlidingWindow):
        w = case.mask.window
        return batch * sum(min(i + 1, w) for i in range(case.length))
    return batch * case.length * (case.length + 1) // 2  # causal


def case_tensors(case: Case, args, dtype: torch.dtype, training: bool) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, L, D) on CUDA, leaves that need grad when ``training``, and a fixed output gradient."""
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.batch, args.heads, case.length, args.head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=g, device="cuda", dtype=dtype) for _ in range(4))
    if training:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, grad_out


def contenders(case: Case, q, k, v, grad_out, training: bool) -> dict[str, Callable[[], object]]:
    """The case's calls by name: the plain PyTorch call, our backends by name, ``auto``; with ``training``
    each call is forward + backward (gradients of q, k, v for ``grad_out``)."""
    dense = case.mask.dense(case.length, case.length, device="cuda") if case.plain == "sdpa dense mask" else None
    plain = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "sdpa causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa dense mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense),
    }[case.plain]

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        return (lambda: torch.autograd.grad(fn(), (q, k, v), grad_out)) if training else fn

    fns = {case.plain: step(plain)}
    for backend in case.ours:
        fns[backend] = step(lambda b=backend: attention(q, k, v, mask=case.mask, backend=b))
    fns["auto"] = step(lambda: attention(q, k, v, mask=case.mask))
    return fns


def run_case(case: Case, args, dtype: torch.dtype, training: bool) -> dict:
    q, k, v, grad_out = case_tensors(case, args, dtype, training)
    fns = contenders(case, q, k, v, grad_out, training)
    row = {
        "case": case.name,
        "L": case.length,
        "mode": "fwd+bwd" if training else "fwd",
        "plain": case.plain,
        "flops": 4 * args.heads * args.head_dim * attended_pairs(case, args.batch) * (3.5 if training else 1.0),
    }
    with torch.set_grad_enabled(training):
        row["times"] = time_interleaved(fns, torch.device("cuda"), warmup=args.warmup, iters=args.iters,
                                        calls=args.calls)
        row["choice"] = explain(q, k, v, mask=case.mask).chosen  # after the calls: the measured choice
    return row


NEIGHBORHOOD_CONFIGS = [  # (query tile, key block) in (depth, rows, columns) cells, warps, pipeline stages
    dict(tile=(1, *t), block=(1, *b), num_warps=w, num_stages=st)
    for t, b, w, st in [
        ((8, 8), (8, 8), 4, 2), ((8, 8), (8, 8), 4, 1), ((8, 8), (4, 16), 4, 2), ((4, 16), (8, 8), 4, 2),
        ((4, 16), (4, 16), 4, 2), ((16, 4), (8, 8), 4, 2), ((8, 8), (16, 4), 4, 2),
    ]
]


def neighborhood_sweep(args, dtype: torch.dtype) -> list[str]:
    """Forward and forward + backward of the neighbourhood kernel per tile / block configuration."""
    from panformer_kernels.triton_neighborhood_attention import (
        neighborhood_backward,
        neighborhood_forward,
    )

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.batch, args.heads, args.grid**2, args.head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=g, device="cuda", dtype=dtype) for _ in range(4))
    options = dict(grid=(1, args.grid, args.grid), kernel_size=(1, args.kernel, args.kernel), dilation=(1, 1, 1),
                   causal=(False, False, False), scale=args.head_dim**-0.5)
    flops = 4 * args.batch * args.heads * args.head_dim * args.grid**2 * args.kernel**2
    lines = ["", "## Neighbourhood kernel configurations (forward; backward = dq + dk/dv kernels)", "",
             "| query tile | key block | warps | stages | forward ms (TFLOP/s) | backward ms (TFLOP/s) |", "|---|---|---|---|---|---|"]
    for config in NEIGHBORHOOD_CONFIGS:
        try:
            out, lse = neighborhood_forward(q, k, v, **options, config=config)
            fwd = time_ms(lambda c=config: neighborhood_forward(q, k, v, **options, config=c), torch.device("cuda"), warmup=2, iters=args.iters)
            bwd = time_ms(
                lambda c=config, o=out, m=lse: neighborhood_backward(grad_out, q, k, v, o, m, **options, config=c),
                torch.device("cuda"), warmup=2, iters=args.iters,
            )
            cells = f"{fwd:.3f} ({flops / fwd / 1e9:.0f}) | {bwd:.3f} ({2.5 * flops / bwd / 1e9:.0f})"
        except Exception as error:  # e.g. out of shared memory for a large tile: the row says so
            cells = f"{type(error).__name__} | –"
        lines.append(f"| {config['tile']} | {config['block']} | {config['num_warps']} | {config['num_stages']} | {cells} |")
        print(lines[-1], flush=True)
    return lines


def render(rows: list[dict], args, command: str) -> str:
    lines = [
        "# Speed: our attention next to what PyTorch ships",
        "",
        f"- command: `{command}`",
        f"- GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"triton {triton_version()}; date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- B={args.batch}, H={args.heads}, D={args.head_dim}, {args.dtype}; median of {args.iters} CUDA-event "
        f"timings of {args.calls} calls back to back (ms per call) after {args.warmup} warm-up calls, contenders "
        "interleaved; cells: ms (effective TFLOP/s over attended pairs)",
        "- `auto / plain`: our dispatch's time over the plain PyTorch call's (below 1 = ours faster); `auto / best`: "
        "over the fastest contender of the row (the issue's target: at most 1.03)",
        "",
        "| case | mode | L | plain PyTorch call | plain | flex (ours) | neighborhood kernel (ours) | auto (choice) | auto / plain | auto / best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row["times"]

        def cell(name: str, t=t, flops=row["flops"]) -> str:
            if name not in t:
                return "–"
            return f"{t[name]:.3f} ({flops / t[name] / 1e9:.0f})"

        lines.append(
            f"| {row['case']} | {row['mode']} | {row['L']} | {row['plain']} | {cell(row['plain'])} | {cell('flex')} | "
            f"{cell('neighborhood')} | {cell('auto')} {row['choice']} | {t['auto'] / t[row['plain']]:.2f} | "
            f"{t['auto'] / min(v for k, v in t.items() if k != 'auto'):.2f} |"
        )
    return "\n".join(lines) + "\n"


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """The shapes of the speed table's cases (``cases(args.length, args.window, ...)``), shared by the scripts
    that time those cases."""
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=128, help="side of the square grid of the 2-D case")
    parser.add_argument("--kernel", type=int, default=15, help="neighbourhood size per axis")
    parser.add_argument("--kernel-1d", type=int, default=1023, help="neighbourhood size of the 1-D case")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--calls", type=int, default=5,
                        help="calls back to back per timed sample: GPU time, the host's hidden behind it (1: one call "
                             "after an idle GPU, the host's time before the launch included)")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--sweep", action="store_true", help="also time neighbourhood kernel configurations")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels: run it on a GPU machine")
    dtype = getattr(torch, args.dtype)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows = []
    for mode in args.modes.split(","):
        for case in cases(args.length, args.window, args.grid, args.kernel, args.kernel_1d):
            if args.only and args.only not in case.name:
                continue
            row = run_case(case, args, dtype, training=mode == "fwd+bwd")
            rows.append(row)
            print(row["mode"], row["case"], {n: round(t, 3) for n, t in row["times"].items()}, row["choice"], flush=True)
            if args.out:  # rewritten after every case: a cut-short run keeps its rows
                with open(args.out, "w") as f:
                    f.write(render(rows, args, command))
    report = render(rows, args, command)
    if args.sweep:
        report += "\n".join(neighborhood_sweep(args, dtype)) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)


if __name__ == "__main__":
    main()
