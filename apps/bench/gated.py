"""Benchmark of the ``panformer::local_global_attention`` op (MossFormer's joint local + global
attention, non-causal and causal; Triton on CUDA) against ``gated_local_global_attention`` in eager torch and
compiled with torch.compile, forward and forward+backward (CUDA events, median).

Shapes: the issue's case, B x H = 32 sequences (B=2, H=16 flattened), L=8192, Z=E=128, chunk 256;
then the MossFormer2 layer's attention (dim 512, expansion 4: v and u of 1024 each, passed together,
so the value is 2048 wide; Z=128). Prints a markdown report (and writes it with ``--out``).

    python apps/bench/gated.py --out apps/bench/results/gated-h200.md     # GPU, bf16
    python apps/bench/gated.py --length 512 --dtype float32 --iters 3      # a quick CPU run
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from collections.abc import Callable

import torch

from panformer_kernels.gated_attention import local_global_attention
from shared_attention.variants.gated import gated_local_global_attention


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 20, repeats: int = 5) -> float:
    """Milliseconds per call of ``fn``: the median over ``repeats`` of ``iters`` back-to-back calls
    between two CUDA events (the GPU's time once the launches run ahead; wall time on CPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def _inputs(batch: int, length: int, dim_z: int, dim_e: int, device, dtype) -> list[torch.Tensor]:
    # Scaled so that relu(q k^T / g)^2 and the global term are of similar size.
    quad = [torch.randn(batch, length, dim_z, device=device, dtype=dtype).mul_(3.0) for _ in range(2)]
    lin = [torch.randn(batch, length, dim_z, device=device, dtype=dtype) for _ in range(2)]
    value = torch.randn(batch, length, dim_e, device=device, dtype=dtype)
    return [t.requires_grad_() for t in (*quad, *lin, value)]


def rows_for(
    batch: int, length: int, dim_z: int, dim_e: int, *, chunk: int, device, dtype, iters: int, masked: bool, causal: bool
):
    """[(name, forward ms, forward+backward ms)] for the op, eager torch and torch.compile."""
    inputs = _inputs(batch, length, dim_z, dim_e, device, dtype)
    key_valid = None
    if masked:  # the last 10% of each sequence is padding
        key_valid = torch.arange(length, device=device)[None, :].expand(batch, -1) < int(0.9 * length)
    torch_fn = functools.partial(gated_local_global_attention, chunk_size=chunk, causal=causal, key_valid=key_valid)
    cases = {
        "op (Triton)" if device.type == "cuda" else "op (CPU: chunked torch)": functools.partial(
            local_global_attention, chunk_size=chunk, causal=causal, key_valid=key_valid
        ),
        "torch, eager": torch_fn,
        "torch, torch.compile": torch.compile(torch_fn),
    }
    grad = torch.randn(batch, length, dim_e, device=device, dtype=dtype)
    rows = []
    for name, fn in cases.items():
        def fwd(fn=fn):
            with torch.no_grad():
                return fn(*inputs)

        def fwd_bwd(fn=fn):
            # autograd.grad: fresh gradients each call, no accumulation into .grad
            return torch.autograd.grad(fn(*inputs), inputs, grad)

        forward = time_ms(fwd, device, iters=iters)
        both = time_ms(fwd_bwd, device, iters=iters)
        rows.append((name, forward, both))
        print(f"  {name}: {forward:.3f} ms / {both:.3f} ms", flush=True)
        if device.type == "cuda" and name.startswith("op"):
            # The same calls replayed from a CUDA graph: the GPU's time without Python launch overhead.
            try:
                forward, both = (time_ms(graphed(f), device, iters=iters) for f in (fwd, fwd_bwd))
            except Exception as error:  # capture can fail on some stacks; the eager rows stand
                print(f"  CUDA graph capture failed: {type(error).__name__}: {error}", flush=True)
                forward = both = float("nan")
            rows.append(("op (Triton), replayed from a CUDA graph", forward, both))
            print(f"  {rows[-1][0]}: {forward:.3f} ms / {both:.3f} ms", flush=True)
    return rows


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` captured in a CUDA graph (after warm-up on a side stream); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def kernel_breakdown(batch: int, length: int, dim_z: int, dim_e: int, *, chunk: int, device, dtype) -> list[str]:
    """GPU time per kernel of the op's forward + backward (torch.profiler), as markdown rows."""
    inputs = _inputs(batch, length, dim_z, dim_e, device, dtype)
    grad = torch.randn(batch, length, dim_e, device=device, dtype=dtype)
    steps = 10

    def step():
        return torch.autograd.grad(local_global_attention(*inputs, chunk_size=chunk), inputs, grad)

    step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        # Kernels only: ranges (aten ops, the op and its autograd node) would count their kernels twice.
        skip = ("aten::", "ProfilerStep", "autograd::", "panformer::", "GeneratedBackwardFor", "Activity Buffer")
        if device_us > 0 and event.key and not event.key.startswith(skip):
            rows.append((device_us / steps, event.count // steps, event.key[:80]))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = ["| kernel | calls per step | GPU us per step |", "| --- | ---: | ---: |"]
    lines += [f"| `{key}` | {count} | {us:.1f} |" for us, count, key in rows[:14]]
    lines.append(f"| all kernels | | {total:.1f} |")
    return lines


def _tuned_configs() -> list[str]:
    """The autotuner's choices so far (CUDA only)."""
    from panformer_kernels import triton_gated_attention as kernels

    lines = []
    for (name, _, _), tuned in kernels._tuned_cache_items():
        for key, config in tuned.cache.items():
            chunk, dim_z, dim_e, has_valid, causal = key[:5]
            blocks = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
            lines.append(
                f"- {name} (chunk {chunk}, Z {dim_z}, E {dim_e}, key_valid {has_valid}, causal {causal}): "
                f"{blocks}, {config.num_warps} warps, {config.num_stages} stages"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="sequences: B x H flattened (issue: 2 x 16)")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--dim-z", type=int, default=128)
    parser.add_argument("--dim-e", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--layer-batch", type=int, default=2, help="batch of the MossFormer2 layer shape")
    parser.add_argument("--layer-value", type=int, default=2048, help="value width of the layer: 2 x 1024 (v, u)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--skip-layer", action="store_true", help="only the issue's shape")
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    triton_version = f"; triton {__import__('triton').__version__}" if device.type == "cuda" else ""

    issue = (args.batch, args.length, args.dim_z, args.dim_e)
    shapes = [
        ("issue's case", *issue, False, False),
        ("issue's case, key_valid (last 10% padding)", *issue, True, False),
        ("issue's case, causal", *issue, False, True),
    ]
    if not args.skip_layer:
        shapes.append(("MossFormer2 layer (dim 512)", args.layer_batch, args.length, args.dim_z, args.layer_value, False, False))

    lines = [
        "# MossFormer joint local + global attention: the fused op against torch",
        "",
        f"- device: {where}; torch {torch.__version__}{triton_version}; {args.dtype}; chunk {args.chunk}; "
        f"per call: median of 5 repeats of {args.iters} back-to-back calls between CUDA events, after warm-up; "
        "forward + backward = output and torch.autograd.grad of all five inputs",
        "- command: `python apps/bench/gated.py --out apps/bench/results/gated-h200.md`",
        "- no dropout on the weights; speed-ups are against torch.compile of `gated_local_global_attention` "
        "(the issue's target: >= 4x, forward and forward+backward); its causal form runs the global part on "
        "the `causal_linear_attention` op",
    ]
    for title, batch, length, dim_z, dim_e, masked, causal in shapes:
        print(f"{title}: N={batch}, L={length}, Z={dim_z}, E={dim_e}", flush=True)
        rows = rows_for(
            batch, length, dim_z, dim_e, chunk=args.chunk, device=device, dtype=dtype, iters=args.iters,
            masked=masked, causal=causal,
        )
        compiled = next(r for r in rows if r[0] == "torch, torch.compile")
        lines += [
            "",
            f"## {title}: N={batch} sequences, L={length}, Z={dim_z}, E={dim_e}",
            "",
            "| implementation | forward (ms) | forward + backward (ms) | fwd vs compile | fwd+bwd vs compile |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, forward, both in rows:
            lines.append(f"| {name} | {forward:.3f} | {both:.3f} | {compiled[1] / forward:.2f}x | {compiled[2] / both:.2f}x |")
        _write(args.out, lines)  # after each shape, so a run cut short keeps what it measured
    if device.type == "cuda":
        try:
            breakdown = kernel_breakdown(*issue, chunk=args.chunk, device=device, dtype=dtype)
        except Exception as error:  # the profiler needs CUPTI
            breakdown = [f"(profiler unavailable: {type(error).__name__}: {error})"]
        lines += ["", "## Op forward + backward by kernel (issue's case, torch.profiler, 10 steps)", "", *breakdown]
        lines += ["", "## Autotuner choices", "", *_tuned_configs()]
    print("\n".join(lines))
    _write(args.out, lines)


def _write(path: str | None, lines: list[str]) -> None:
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
