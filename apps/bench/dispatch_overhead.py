"""Where the time of one attention call goes: host (Python + launch) vs GPU kernels, per contender of
``speed.py`` (issue 18: why ``auto`` differs from naming the backend it picks, and from plain SDPA).

For each case and mode, every contender of ``speed.py`` (the plain PyTorch call, our backends by name,
``auto``) is measured four ways, interleaved in one run:

- ``single``: CUDA events around one call, as ``speed.py`` times it (an idle GPU waits for the host, so
  host time before the first launch counts);
- ``queued``: CUDA events around ``--queue`` calls back to back, per call (the host runs ahead of the GPU,
  so host time is hidden whenever the kernels are longer than it);
- ``host``: wall-clock time of the host side of one call while the GPU is busy (Python, dispatch, launch);
- ``kernels``: the sum of the GPU kernels' own durations per call (torch.profiler), and their names.

    python apps/bench/dispatch_overhead.py --out apps/bench/results/dispatch-overhead-h100.md
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from speed import Case, add_case_arguments, case_tensors, cases, contenders  # apps/bench/speed.py
from timing import triton_version

from shared_attention import explain


def event_ms(fn: Callable[[], object], calls: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def host_ms(fn: Callable[[], object], busy: Callable[[], object]) -> float:
    busy()  # queue GPU work first, so the call below only launches (it does not wait for the GPU)
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3


def kernel_profile(fn: Callable[[], object], calls: int) -> tuple[float, list[str]]:
    """Summed GPU kernel time per call (ms) and the kernels' names, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, names = 0.0, defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            us = event.device_time if hasattr(event, "device_time") else event.cuda_time
            total += us
            names[event.name[:60]] += us / calls
    top = sorted(names.items(), key=lambda kv: -kv[1])[:3]
    return total / calls / 1e3, [f"{n} {t / 1e3:.3f}" for n, t in top]


def host_profile(case: Case, args, contender: str, training: bool, calls: int = 30) -> str:
    """cProfile of the host side of ``calls`` calls of one contender (the GPU queue kept busy): where the
    host time goes, by cumulative time of the 25 costliest functions."""
    import cProfile
    import io
    import pstats

    q, k, v, grad_out = case_tensors(case, args, torch.bfloat16, training)
    with torch.set_grad_enabled(training):
        fn = contenders(case, q, k, v, grad_out, training)[contender]
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            fn()
        profiler.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    mode = "fwd+bwd" if training else "fwd"
    return f"\n## Host profile: {case.name}, {mode}, {contender} ({calls} calls)\n\n```\n{text.getvalue()}```\n"


def run_case(case: Case, args, dtype: torch.dtype, training: bool) -> dict:
    q, k, v, grad_out = case_tensors(case, args, dtype, training)
    results: dict[str, dict] = {}
    with torch.set_grad_enabled(training):
        fns = contenders(case, q, k, v, grad_out, training)
        busy = next(iter(fns.values()))  # the plain call: something long to keep the GPU busy
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        torch.cuda.synchronize()
        samples = {name: defaultdict(list) for name in fns}
        names = list(fns)
        for round_ in range(args.iters):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                samples[name]["single"].append(event_ms(fns[name], 1))
                samples[name]["queued"].append(event_ms(fns[name], args.queue))
                samples[name]["host"].append(host_ms(fns[name], busy))
        for name, fn in fns.items():
            kernel, top = kernel_profile(fn, args.queue)
            results[name] = {m: statistics.median(s) for m, s in samples[name].items()} | {"kernels": kernel, "top": top}
        choice = explain(q, k, v, mask=case.mask).chosen
    return {"case": case.name, "mode": "fwd+bwd" if training else "fwd", "choice": choice, "results": results}


def render(rows: list[dict], command: str) -> str:
    lines = [
        "# Dispatch overhead: host vs GPU time per attention call",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today()}",
        f"- hardware: {torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton_version()}",
        "- columns (ms, medians): `single` one call between CUDA events (speed.py's timing); `queued` per call of "
        "calls back to back; `host` the host side of one call while the GPU is busy; `kernels` the GPU kernels' "
        "summed durations per call (torch.profiler); top kernels by time per call",
        "",
        "| case | mode | contender | single | queued | host | kernels | top kernels (ms per call) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, r in row["results"].items():
            label = f"auto ({row['choice']})" if name == "auto" else name
            lines.append(
                f"| {row['case']} | {row['mode']} | {label} | {r['single']:.3f} | {r['queued']:.3f} | "
                f"{r['host']:.3f} | {r['kernels']:.3f} | {'; '.join(r['top'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser)
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--queue", type=int, default=5, help="calls back to back in the queued and kernel timings")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--host-profile", default=None, metavar="CONTENDER",
                        help="instead of the table, cProfile the host side of this contender (e.g. neighborhood) "
                             "on the cases selected by --only and --modes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA kernels: run it on a GPU machine")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if args.host_profile:
        report = "".join(
            host_profile(case, args, args.host_profile, training=mode == "fwd+bwd")
            for mode in args.modes.split(",")
            for case in cases(args.length, args.window, args.grid, args.kernel, args.kernel_1d)
            if (not args.only or args.only in case.name) and args.host_profile in (*case.ours, case.plain, "auto")
        )
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
        return
    rows = []
    for mode in args.modes.split(","):
        for case in cases(args.length, args.window, args.grid, args.kernel, args.kernel_1d):
            if args.only and args.only not in case.name:
                continue
            rows.append(run_case(case, args, torch.bfloat16, training=mode == "fwd+bwd"))
            print("\n".join(render(rows[-1:], command).splitlines()[-len(rows[-1]["results"]):]), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    f.write(render(rows, command))
    print(render(rows, command))


if __name__ == "__main__":
    main()
