"""Benchmark of the compiled kernels: chunked causal linear attention and the MossFormer unit.

Times, forward and forward+backward, the ``panformer::causal_linear_attention`` op (Triton on
CUDA) against the chunked form in eager torch and compiled with torch.compile, with SDPA's causal
softmax attention (FlashAttention on GPU) as a point of reference; then the MossFormer gated
local+global attention layer. Prints a markdown report (and writes it with ``--out``).

    python apps/bench/kernels.py                         # B=2, H=16, D=128, L=8192, bf16 (GPU)
    python apps/bench/kernels.py --length 1024 --heads 4 --dtype float32   # a quick CPU run
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F
from timing import forward_and_backward, time_ms  # apps/bench/timing.py (this script's folder)

from panformer_kernels import causal_linear_attention, chunked_causal_linear_attention
from shared_attention.variants.gated import GatedLocalGlobalAttention


def linear_attention_rows(args, device, dtype) -> list[tuple[str, float, float]]:
    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).mul_(0.3).requires_grad_() for _ in range(3))
    compiled = torch.compile(chunked_causal_linear_attention)
    cases = {
        "op (Triton on CUDA)" if device.type == "cuda" else "op (CPU: chunked torch)": causal_linear_attention,
        "chunked torch, eager": chunked_causal_linear_attention,
        "chunked torch, torch.compile": compiled,
        "reference: SDPA causal softmax": lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
    }
    if device.type == "cuda":
        # A per-step decay (gated linear attention): log g = logsigmoid(gate), one per (B, H, L).
        log_decay = F.logsigmoid(torch.randn(shape[:-1], device=device) + 3).requires_grad_()
        cases["op with per-step decay (Triton)"] = lambda a, b, c: causal_linear_attention(a, b, c, log_decay=log_decay)
    rows = []
    for name, fn in cases.items():
        fwd, fwd_bwd = forward_and_backward(fn, q, k, v)
        rows.append((name, time_ms(fwd, device, iters=args.iters), time_ms(fwd_bwd, device, iters=args.iters)))
        q.grad = k.grad = v.grad = None
    return rows


def triton_sweep_rows(args, device, dtype) -> list[tuple[str, float]]:
    from panformer_kernels.triton_linear_attention import triton_causal_linear_attention

    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).mul_(0.3) for _ in range(3))
    rows = []
    for chunk, block_k, block_v, warps in [
        (64, 64, 64, 4),
        (64, 128, 64, 4),
        (64, 128, 64, 8),
        (64, 128, 32, 4),
        (32, 128, 64, 4),
        (128, 128, 64, 8),
        (64, 128, 128, 8),
    ]:
        def run(chunk=chunk, block_k=block_k, block_v=block_v, warps=warps):
            return triton_causal_linear_attention(
                q, k, v, chunk_size=chunk, block_k=block_k, block_v=block_v, num_warps=warps
            )

        try:
            rows.append((f"chunk={chunk} block_k={block_k} block_v={block_v} warps={warps}", time_ms(run, device)))
        except Exception as error:  # a config that does not fit (registers, shared memory)
            rows.append((f"chunk={chunk} block_k={block_k} block_v={block_v} warps={warps}: {type(error).__name__}", float("nan")))
    return rows


def mossformer_rows(args, device, dtype) -> list[tuple[str, float, float]]:
    rows = []
    x = torch.randn(args.batch, args.length, args.model_dim, device=device, dtype=dtype, requires_grad=True)
    for causal in (False, True):
        layer = GatedLocalGlobalAttention(args.model_dim, causal=causal, dropout=0.0).to(device=device, dtype=dtype)
        fwd, fwd_bwd = forward_and_backward(layer, x)
        name = f"GatedLocalGlobalAttention dim={args.model_dim} ({'causal: global part on the op' if causal else 'non-causal'})"
        rows.append((name, time_ms(fwd, device, iters=args.iters), time_ms(fwd_bwd, device, iters=args.iters)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--model-dim", type=int, default=512, help="width of the MossFormer layer")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="also time Triton block configurations")
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)

    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    lines = [
        "# Kernel benchmark: chunked causal linear attention and the MossFormer unit",
        "",
        f"- device: {where}; torch {torch.__version__}"
        + (f"; triton {__import__('triton').__version__}" if device.type == "cuda" else ""),
        f"- shapes: B={args.batch}, H={args.heads}, D={args.head_dim}, L={args.length}, {args.dtype}; "
        f"median of {args.iters} timed runs after warm-up",
        "",
        "## Causal linear attention (B, H, L, D) -> (B, H, L, D)",
        "",
        "| implementation | forward (ms) | forward + backward (ms) | fwd speed-up vs eager | fwd+bwd speed-up vs eager |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    rows = linear_attention_rows(args, device, dtype)
    eager = next(r for r in rows if r[0] == "chunked torch, eager")
    for name, fwd, fwd_bwd in rows:
        lines.append(f"| {name} | {fwd:.3f} | {fwd_bwd:.3f} | {eager[1] / fwd:.2f}x | {eager[2] / fwd_bwd:.2f}x |")
    if args.sweep and device.type == "cuda":
        lines += ["", "## Triton block configurations (forward)", "", "| config | forward (ms) |", "| --- | ---: |"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in triton_sweep_rows(args, device, dtype)]
    lines += [
        "",
        f"## MossFormer gated local+global attention layer, x (B={args.batch}, L={args.length}, dim={args.model_dim})",
        "",
        "chunk 256, query/key width 128, expansion 4 (the MossFormer2 defaults).",
        "",
        "| layer | forward (ms) | forward + backward (ms) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {fwd:.3f} | {fwd_bwd:.3f} |" for name, fwd, fwd_bwd in mossformer_rows(args, device, dtype)]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
