"""Our neighbourhood attention (``shared_attention.na1d/na2d/na3d``, through the core's dispatch) next to
NATTEN's ``flex-fna`` backend, on the speed table's 1-D / 2-D / 3-D shapes (apps/bench/speed.py), a
strided 2-D case (Generalized Neighborhood Attention) beside its stride-1 twin, and a small NAT-style
image classifier (four stages of 7x7 neighbourhood attention) timed end to end with either attention.

Both sides take the same heads-last tensors and arguments. On CUDA NATTEN's Flex path is compiled
(``natten.allow_flex_compile(backprop=True)``, ``torch_compile=True``); on CPU it runs eagerly, forward
only there. Contenders are timed interleaved in one run (apps/bench/timing.py); cells are ms.

    python apps/bench/natten.py --out apps/bench/results/natten-h200.md     # B=2, H=16, D=128, bf16
    python apps/bench/natten.py --smoke --out /tmp/natten.md                # tiny CPU check (seconds)

Needs natten==0.21.7 (the Makefile installs it as a test dependency, without its CUDA library).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import itertools
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from timing import time_interleaved, triton_version  # apps/bench/timing.py
from torch import Tensor, nn

from shared_attention import explain, na1d, na2d, na3d
from shared_attention.masks import Neighborhood

OURS = {1: na1d, 2: na2d, 3: na3d}


@dataclass(frozen=True)
class Case:
    name: str
    grid: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = (1,)
    causal: tuple[bool, ...] = (False,)

    def options(self) -> dict:
        axes = len(self.grid)
        widen = lambda t: t * axes if len(t) == 1 else t  # noqa: E731  (one value for every axis)
        return dict(kernel_size=self.kernel_size, stride=widen(self.stride), is_causal=widen(self.causal))


def cases(smoke: bool) -> list[Case]:
    if smoke:
        return [
            Case("1-D 7 on 64", (64,), (7,)),
            Case("2-D 3x3 on 8x8", (8, 8), (3, 3)),
            Case("2-D 4x4 on 8x8, stride 1", (8, 8), (4, 4)),
            Case("2-D 4x4 on 8x8, stride 4 (blocked)", (8, 8), (4, 4), (4,)),
            Case("3-D 2x3x3 on 4x4x4, causal in time", (4, 4, 4), (2, 3, 3), causal=(True, False, False)),
        ]
    return [  # the speed table's neighbourhood rows (apps/bench/results/speed-h200.md), then GNA
        Case("1-D 1023 on 16384", (16384,), (1023,)),
        Case("2-D 15x15 on 128x128", (128, 128), (15, 15)),
        Case("3-D 3x7x7 on 16x32x32, causal in time", (16, 32, 32), (3, 7, 7), causal=(True, False, False)),
        Case("2-D 16x16 on 128x128, stride 1", (128, 128), (16, 16)),
        Case("2-D 16x16 on 128x128, stride 8", (128, 128), (16, 16), (8,)),
        Case("2-D 16x16 on 128x128, stride 16 (blocked)", (128, 128), (16, 16), (16,)),
    ]


@cache
def natten_package():
    """The natten package: this script's own name would shadow it, its folder being first on sys.path."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("natten")
    finally:
        sys.path[:] = saved


def natten_call(axes: int, device: torch.device) -> Callable[..., Tensor]:
    """NATTEN's na{axes}d on its Flex backend, compiled on CUDA (its fastest Flex path), eager elsewhere."""
    natten = natten_package()
    compiled = device.type == "cuda"
    if compiled:
        natten.allow_flex_compile(True, backprop=True)
    fn = getattr(natten, f"na{axes}d")

    def call(q, k, v, **options):
        with warnings.catch_warnings():  # eager Flex warns on every call that it is not compiled
            warnings.simplefilter("ignore")
            return fn(q, k, v, **options, backend="flex-fna", torch_compile=compiled)

    return call


def steps(fn: Callable[[], Tensor], inputs: tuple[Tensor, ...], training: bool) -> Callable[[], object]:
    if not training:
        def forward():
            with torch.no_grad():
                return fn()
        return forward
    grad: list[Tensor] = []

    def forward_backward():
        out = fn()
        if not grad:
            grad.append(torch.randn_like(out))
        return torch.autograd.grad(out, inputs, grad[0])

    return forward_backward


def time_case(case: Case, args, device: torch.device, dtype: torch.dtype, training: bool) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, *case.grid, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(training) for _ in range(3))
    options = case.options()
    ours, theirs = OURS[len(case.grid)], natten_call(len(case.grid), device)
    fns = {
        "ours": steps(lambda: ours(q, k, v, **options), (q, k, v), training),
        "natten": steps(lambda: theirs(q, k, v, **options), (q, k, v), training),
    }
    length = q.shape[1:-2].numel()
    heads_first = q.reshape(args.batch, length, args.heads, -1).transpose(1, 2)
    mask = Neighborhood(case.grid, case.kernel_size, causal=options["is_causal"], stride=options["stride"])
    with torch.set_grad_enabled(training):
        choice = explain(heads_first, heads_first, heads_first, mask=mask).chosen
        times, failed = time_surviving(fns, device, args)
    return dict(case=case.name, mode="fwd+bwd" if training else "fwd", choice=choice, times=times, failed=failed)


def time_surviving(fns: dict[str, Callable[[], object]], device: torch.device, args) -> tuple[dict, dict]:
    """Interleaved timings of the contenders that run; one that raises (NATTEN's Flex falling back to its
    dense math path and running out of memory, say) is timed as failed with its error's first line."""
    failed: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            fn()
        except (RuntimeError, torch.OutOfMemoryError) as error:
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    running = {name: fn for name, fn in fns.items() if name not in failed}
    times = time_interleaved(running, device, warmup=args.warmup, iters=args.iters) if running else {}
    return times, failed


# --------------------------------------------------------------------------------------------
# A NAT-style classifier: conv stem, four stages of 7x7 neighbourhood attention, conv downsampling


class NABlock(nn.Module):
    """Pre-norm transformer block whose attention is 2-D neighbourhood attention over (B, X, Y, C) maps,
    computed by ``attend`` (ours or NATTEN's na2d: same heads-last arguments)."""

    def __init__(self, dim: int, heads: int, kernel: int, attend: Callable[..., Tensor]):
        super().__init__()
        self.heads, self.kernel, self.attend = heads, kernel, attend
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, rows, cols, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, rows, cols, 3, self.heads, dim // self.heads).unbind(3)
        x = x + self.proj(self.attend(q, k, v, kernel_size=self.kernel).reshape(batch, rows, cols, dim))
        return x + self.mlp(self.norm2(x))


class NATClassifier(nn.Module):
    """(B, 3, S, S) images -> (B, classes) logits; stages at S/4, S/8, S/16, S/32."""

    def __init__(self, attend: Callable[..., Tensor], *, dims=(64, 128, 256, 512), depths=(2, 2, 2, 2),
                 heads=(2, 4, 8, 16), kernel: int = 7, classes: int = 1000):
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], kernel_size=4, stride=4)
        self.stages = nn.ModuleList(
            nn.Sequential(*(NABlock(dim, h, kernel, attend) for _ in range(depth)))
            for dim, depth, h in zip(dims, depths, heads, strict=True)
        )
        self.downs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1) for a, b in itertools.pairwise(dims)
        )
        self.head = nn.Sequential(nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], classes))

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images).permute(0, 2, 3, 1)  # (B, X, Y, C)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downs):
                x = self.downs[i](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.head(x.mean(dim=(1, 2)))


def time_classifier(args, device: torch.device, dtype: torch.dtype, training: bool) -> dict:
    # Smoke: stages of 16, 8, 4, 2 cells per side, 2x2 windows (NATTEN takes kernel sizes from 2).
    kernel, size = (2, 64) if args.smoke else (7, args.image_size)
    config = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), heads=(1, 2, 4, 8), classes=10) if args.smoke else {}
    ours = NATClassifier(na2d, kernel=kernel, **config).to(device)
    theirs = NATClassifier(natten_call(2, device), kernel=kernel, **config).to(device)
    theirs.load_state_dict(ours.state_dict())  # the same weights: only the attention differs
    images = torch.randn(args.image_batch, 3, size, size, device=device)
    models = {"ours": ours, "natten": theirs}
    fns = {}
    for name, model in models.items():
        model.train(training)

        def step(model=model):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(images)
            if training:
                logits.float().logsumexp(-1).sum().backward()
            return logits

        fns[name] = step if training else torch.no_grad()(step)
    times, failed = time_surviving(fns, device, args)
    name = f"NAT classifier {size}x{size}, batch {args.image_batch}, {kernel}x{kernel} windows"
    return dict(case=name, mode="train step" if training else "inference", choice="end to end", times=times, failed=failed)


def render(rows: list[dict], args, device: torch.device, command: str) -> str:
    natten = natten_package()
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [
        "# Neighbourhood attention: ours (na1d/na2d/na3d) vs NATTEN's flex-fna",
        "",
        f"- command: `{command}`",
        f"- device: {where}; torch {torch.__version__}; natten {natten.__version__}; triton {triton_version()}; "
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- B={args.batch}, H={args.heads}, D={args.head_dim}, {args.dtype}; median of {args.iters} timings after "
        f"{args.warmup} warm-up calls, contenders interleaved; NATTEN's Flex "
        f"{'compiled' if device.type == 'cuda' else 'eager (CPU)'}",
        "- `ours / natten`: below 1 = ours faster",
        "",
        "| case | mode | ours ms (backend) | natten flex-fna ms | ours / natten |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        t = row["times"]
        ours = f"{t['ours']:.3f} ({row['choice']})" if "ours" in t else "failed"
        natten_ms = f"{t['natten']:.3f}" if "natten" in t else "failed"
        ratio = f"{t['ours'] / t['natten']:.2f}" if len(t) == 2 else "–"
        lines.append(f"| {row['case']} | {row['mode']} | {ours} | {natten_ms} | {ratio} |")
    notes = [f"- {row['case']}, {row['mode']}: {name} failed: {why}" for row in rows for name, why in row["failed"].items()]
    return "\n".join(lines + (["", "Failures:", *notes] if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (a check that it runs, seconds)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.heads, args.head_dim, args.image_batch = 1, 2, 16, 2
        args.dtype, args.warmup, args.iters = "float32", 1, 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = getattr(torch, args.dtype)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    modes = args.modes.split(",")
    if device.type == "cpu":
        modes = [m for m in modes if m == "fwd"]  # NATTEN's Flex has no backward on CPU
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        print(row["mode"], row["case"], row["times"], row["choice"], flush=True)
        if args.out:  # rewritten after every row: a cut-short run keeps what it measured
            with open(args.out, "w") as f:
                f.write(render(rows, args, device, command))

    for mode in modes:
        for case in cases(args.smoke):
            if not args.only or args.only in case.name:
                record(time_case(case, args, device, dtype, training=mode == "fwd+bwd"))
        if not args.only or args.only in "NAT classifier":
            record(time_classifier(args, device, dtype, training=mode == "fwd+bwd"))
    print(render(rows, args, device, command))


if __name__ == "__main__":
    main()
