"""Does our Relational Transformer compile with Inductor on CUDA, and how fast is a compiled training step?

The end-to-end bench (RT-J size, 1024 cells) failed Inductor's lowering on CUDA with "torch.bool is not supported
by torch.iinfo" (results/end-to-end-h200.md). This script builds the same inputs (apps/bench/end_to_end.py's
synthetic shop) at a chosen size, compiles the model, runs one training and one inference step, prints the error's
first 3000 characters if either fails, and with ``--time`` compares eager and compiled training steps.

    python apps/bench/compile_relational.py                       # 1024 cells, small model: the Flex path
    python apps/bench/compile_relational.py --dim 512 --depth 12 --heads 8 --batch 32 --time   # RT-J size
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import end_to_end as e2e

from panformer.relational.model import RelationalTransformer


def timed_ms(fn, *, iters: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--time", action="store_true", help="time eager and compiled training steps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the failure is in Inductor's CUDA lowering)")
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = RelationalTransformer(dim=args.dim, depth=args.depth, num_heads=args.heads, mlp_ratio=6.0, dropout=0.0,
                                  full_attention=False).to(device)
    cells = e2e.relational_cells(args.batch, cells=args.cells, generator=torch.Generator().manual_seed(0))
    batch = e2e.our_relational_batch(cells, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(m: torch.nn.Module) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = e2e.our_relational_loss(m, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step(m: torch.nn.Module) -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            m(batch)

    compiled = torch.compile(model)
    failed = False
    for name, step in (("train", train_step), ("infer", infer_step)):
        try:
            step(compiled)
            torch.cuda.synchronize()  # a kernel's fault surfaces here, under the step that launched it
            print(name, "compiled: OK", flush=True)
        except Exception as error:  # report Inductor's message, whatever its type
            failed = True
            print(name, "compiled: FAILED", flush=True)
            print(str(error)[:3000])
    if args.time and not failed:
        eager, fast = timed_ms(lambda: train_step(model)), timed_ms(lambda: train_step(compiled))
        print(f"train step ms: eager {eager:.2f}, compiled {fast:.2f}; samples/s eager {args.batch / eager * 1e3:.1f}, "
              f"compiled {args.batch / fast * 1e3:.1f} ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
