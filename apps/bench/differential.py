"""Benchmark of fused differential attention: the ``panformer::differential_attention`` op (Triton
on CUDA) against the composition of two SDPA calls, and the ``DifferentialAttention`` variant module
as it runs today (two calls through the core's dispatch) against the same module math on the op.

    out = softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v,   q = [q1 q2], k = [k1 k2] (B, H, L, D)

Times (CUDA events, median after warm-up) forward and forward+backward (gradients for q, k, v and
lam), causal and not; ``--sweep`` also times Triton tile configurations. Prints a markdown report
(and writes it with ``--out``).

    python apps/bench/differential.py                    # B=2, H=16, D=128, L=8192, bf16 (GPU)
    python apps/bench/differential.py --length 256 --heads 2 --dtype float32 --iters 3   # CPU check
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import forward_and_backward, time_ms  # apps/bench/timing.py (this script's folder)

from panformer_kernels.differential_attention import differential_attention
from shared_attention.masks import Causal
from shared_attention.variants.differential import DifferentialAttention, lambda_init_for


def two_sdpa(q, k, v, lam, *, causal: bool):
    """The composition the op replaces: two SDPA calls on the halves, then the difference."""
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    first = F.scaled_dot_product_attention(q1, k1, v, is_causal=causal)
    second = F.scaled_dot_product_attention(q2, k2, v, is_causal=causal)
    return first - lam.to(first.dtype) * second


def fused(q, k, v, lam, *, causal: bool):
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    return differential_attention(q1, q2, k1, k2, v, lam, causal=causal)


def fused_module(module: DifferentialAttention, *, causal: bool) -> Callable:
    """The variant module's math with the op in place of its two calls (what the dispatch will run)."""

    def forward(q, k, v):
        q1, q2 = q.chunk(2, -1)
        k1, k2 = k.chunk(2, -1)
        out = differential_attention(q1, q2, k1, k2, v, module.lambda_full(), causal=causal)
        out = F.rms_norm(out, (out.shape[-1],), module.norm_weight, module.eps)
        return out * (1 - module.lambda_init)

    return forward


def attention_flops(args, *, causal: bool) -> float:
    """Forward FLOPs of ONE D=head_dim softmax attention (the issue counts differential attention so)."""
    pairs = args.length * args.length * (0.5 if causal else 1.0)
    return 4 * args.batch * args.heads * pairs * args.head_dim


def main_rows(args, device, dtype) -> list[tuple[str, bool, float, float]]:
    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_() for _ in range(3))
    lam = torch.tensor(0.55, device=device, requires_grad=True)
    module = DifferentialAttention(head_dim=args.head_dim, lambda_init=lambda_init_for(4)).to(device)
    rows = []
    for causal in (True, False):
        cases = {
            "two SDPA calls": lambda a, b, c, causal=causal: two_sdpa(a, b, c, lam, causal=causal),
            "op (fused Triton)" if device.type == "cuda" else "op (CPU reference)": (
                lambda a, b, c, causal=causal: fused(a, b, c, lam, causal=causal)
            ),
            "variant module today (two core calls + norm)": (
                lambda a, b, c, causal=causal: module(a, b, c, mask=Causal() if causal else None)
            ),
            "variant module math on the op (+ norm)": fused_module(module, causal=causal),
        }
        for name, fn in cases.items():
            fwd, fwd_bwd = forward_and_backward(fn, q, k, v)
            rows.append((name, causal, time_ms(fwd, device, iters=args.iters), time_ms(fwd_bwd, device, iters=args.iters)))
            print(rows[-1], file=sys.stderr, flush=True)
            q.grad = k.grad = v.grad = lam.grad = None
            module.zero_grad(set_to_none=True)
    return rows


FORWARD_CONFIGS = [  # block_m, block_n, num_warps, num_stages
    (64, 64, 4, 3),
    (64, 64, 4, 4),
    (64, 64, 4, 2),
    (128, 64, 8, 3),
]
BACKWARD_CONFIGS = [  # block_m1, block_n1, block_m2, block_n2, warps1, warps2, num_stages
    (32, 64, 128, 64, 4, 8, 3),
    (64, 64, 128, 64, 4, 8, 3),
    (32, 64, 64, 64, 4, 4, 3),
    (32, 64, 128, 64, 4, 8, 4),
]
FORWARD_KEYS = ("block_m", "block_n", "num_warps", "num_stages")
BACKWARD_KEYS = ("block_m1", "block_n1", "block_m2", "block_n2", "warps1", "warps2", "num_stages")


def sweep(args, device, dtype) -> tuple[list[tuple[str, float]], dict, dict]:
    """Times every configuration (causal); returns the rows and the fastest forward and backward
    keyword arguments."""
    from panformer_kernels.triton_differential_attention import (
        differential_backward,
        differential_forward,
    )

    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    q1, q2 = q.chunk(2, -1)
    k1, k2 = k.chunk(2, -1)
    lam = torch.tensor(0.55, device=device)
    scale = q1.shape[-1] ** -0.5
    rows, best_forward, best_backward = [], (float("inf"), {}), (float("inf"), {})
    for config in FORWARD_CONFIGS:
        options = dict(zip(FORWARD_KEYS, config, strict=True))
        name = "forward " + " ".join(f"{key}={value}" for key, value in options.items())
        try:
            ms = time_ms(lambda o=options: differential_forward(
                q1, q2, k1, k2, v, lam, causal=True, scale=scale, **o
            ), device, iters=args.iters)
        except Exception as error:  # a config that does not fit (registers, shared memory)
            name, ms = f"{name}: {type(error).__name__}", float("nan")
        rows.append((name, ms))
        best_forward = min(best_forward, (ms, options), key=lambda r: r[0] if r[0] == r[0] else float("inf"))
        print(rows[-1], file=sys.stderr, flush=True)
    out, out2, lse = differential_forward(q1, q2, k1, k2, v, lam, causal=True, scale=scale)
    grad = torch.randn_like(out)
    for config in BACKWARD_CONFIGS:
        options = dict(zip(BACKWARD_KEYS, config, strict=True))
        name = "backward " + " ".join(f"{key}={value}" for key, value in options.items())
        try:
            ms = time_ms(lambda o=options: differential_backward(
                grad, q1, q2, k1, k2, v, lam, out, out2, lse, causal=True, scale=scale, **o
            ), device, iters=args.iters)
        except Exception as error:
            name, ms = f"{name}: {type(error).__name__}", float("nan")
        rows.append((name, ms))
        best_backward = min(best_backward, (ms, options), key=lambda r: r[0] if r[0] == r[0] else float("inf"))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows, best_forward[1], best_backward[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128, help="D: q/k halves of D/2, values of width D")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--sweep", action="store_true",
        help="first time Triton configurations (causal), then run the main table with the fastest",
    )
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)

    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    versions = f"torch {torch.__version__}"
    if device.type == "cuda":
        versions += f"; triton {__import__('triton').__version__}"
    lines = [
        "# Differential attention benchmark: fused op vs two SDPA calls",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- device: {where}; {versions}",
        f"- shapes: B={args.batch}, H={args.heads}, D={args.head_dim} (q/k halves of {args.head_dim // 2}, "
        f"values of {args.head_dim}), L={args.length}, {args.dtype}; median of {args.iters} timed runs after "
        "3 warm-up runs (CUDA events); forward under no_grad, forward + backward with gradients for q, k, v, lam",
        "- TFLOP/s count one D-wide attention (as the issue does): 4 B H L^2 D, halved when causal",
        "",
        "| implementation | causal | forward (ms) | fwd TFLOP/s | fwd speed-up vs two SDPA | fwd+bwd (ms) | fwd+bwd speed-up |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    swept = None
    if args.sweep and device.type == "cuda":
        from panformer_kernels import triton_differential_attention as kernels

        swept, best_forward, best_backward = sweep(args, device, dtype)
        # The op calls the launchers with their defaults: make the fastest configurations the defaults.
        kernels.differential_forward.__kwdefaults__.update(best_forward)
        kernels.differential_backward.__kwdefaults__.update(best_backward)
        lines[3:3] = [f"- configurations (from the sweep below): forward {best_forward}; backward {best_backward}"]
    rows = main_rows(args, device, dtype)
    for name, causal, fwd, fwd_bwd in rows:
        base = next(r for r in rows if r[0] == "two SDPA calls" and r[1] == causal)
        tflops = attention_flops(args, causal=causal) / (fwd * 1e-3) / 1e12
        lines.append(
            f"| {name} | {'yes' if causal else 'no'} | {fwd:.3f} | {tflops:.0f} | {base[2] / fwd:.2f}x | "
            f"{fwd_bwd:.3f} | {base[3] / fwd_bwd:.2f}x |"
        )
    if swept:
        lines += ["", "## Triton configurations (causal, one launcher call)", "", "| config | time (ms) |", "| --- | ---: |"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in swept]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
