"""Scaling efficiency of training on N processes (GPUs) of one host: each domain's real `train` command
under torchrun, side by side at every process count, in one run.

For each ``--run DOMAIN:RECIPE`` and each count in ``--procs``, runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m panformer.<domain>.cli train
        --recipe RECIPE --out <work>/<domain>-<N> --set train.epochs=E [--set ...]

and reads the engine's ``log.jsonl``: every epoch covers the whole training split once, so its
``train_samples_per_s`` is the throughput of all ranks together (per-rank batch fixed: the global batch
grows with N, as DDP users run it). Throughput is the median over the epochs after the first (compiles and
caches warm up in epoch 0). Efficiency = throughput(N) / (N x throughput(1)).

    python apps/bench/scaling.py --run speech:paper --run music:mmt --run relational:database \\
        --procs 1,2 --epochs 3 --out apps/bench/results/scaling-h200x2.md          # on a 2-GPU host
    python apps/bench/scaling.py --run timeseries:demo --procs 1,2 --epochs 2 --device cpu   # gloo, a check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def train_command(domain: str, recipe: str, procs: int, out: Path, *, epochs: int, device: str,
                  overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", f"panformer.{domain}.cli", "train", "--recipe", recipe, "--out", str(out), "--device", device,
           "--set", f"train.epochs={epochs}"]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


def throughput(log_file: Path) -> float:
    """Median samples/s of the epochs after the first (the only one if a single epoch ran)."""
    rows = [json.loads(line) for line in log_file.read_text().splitlines()]
    rates = [row["train_samples_per_s"] for row in rows]
    return statistics.median(rates[1:] or rates)


def run_group(cmd: list[str], *, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill the whole group, so that no torchrun worker outlives
    its launcher and holds a GPU through the next run. A timeout is returned as a failure (exit -9)."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\nTimeoutError: the run took over {timeout:.0f} s (--timeout) and was killed\n"
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def failure_line(stderr: str) -> str:
    """The line that says why a run failed: the last error-like line, not torchrun's closing banner."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip().strip("=-")]
    errors = [line for line in lines if re.search(r"Error|Exception|error:", line)]
    return ((errors or lines or ["(no output)"])[-1])[:200]


def measure(domain: str, recipe: str, procs_list: list[int], args) -> list[dict]:
    rows = []
    for procs in procs_list:
        out = args.work / f"{domain}-{recipe.replace('/', '_')}-{procs}"
        shutil.rmtree(out, ignore_errors=True)  # the bench's own folder: a stale one would be refused by train
        cmd = train_command(domain, recipe, procs, out, epochs=args.epochs, device=args.device, overrides=args.set)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        result = run_group(cmd, timeout=args.timeout, env=env)
        row = {"domain": domain, "recipe": recipe, "procs": procs}
        if result.returncode != 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "stderr.txt").write_text(result.stderr)  # torchrun's summary hides the cause: keep it all
            row["error"] = failure_line(result.stderr)
        else:
            row["samples_per_s"] = throughput(out / "log.jsonl")
        rows.append(row)
        print(row, flush=True)
    base = next((r.get("samples_per_s") for r in rows if r["procs"] == 1), None)
    for row in rows:
        if base and "samples_per_s" in row:
            row["efficiency"] = row["samples_per_s"] / (row["procs"] * base)
    return rows


def render(rows: list[dict], args, command: str) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" and torch.cuda.is_available() else "CPU (gloo)"
    lines = [
        "# Scaling efficiency of training (torchrun, one host)",
        "",
        f"- command: `{command}`",
        f"- device: {device} x N; torch {torch.__version__}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- {args.epochs} epochs per run; throughput = median `train_samples_per_s` of the epochs after the first; "
        "efficiency = samples/s at N / (N x samples/s at 1)",
        "",
        "| domain | recipe | processes | samples/s | efficiency |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['domain']} | {row['recipe']} | {row['procs']} | failed: {row['error']} | |")
            continue
        efficiency = f"{row['efficiency']:.1%}" if "efficiency" in row else "–"
        lines.append(f"| {row['domain']} | {row['recipe']} | {row['procs']} | {row['samples_per_s']:.1f} | {efficiency} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="DOMAIN:RECIPE",
                        help="a domain and its recipe (name or path); repeat for several")
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (include 1)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", type=Path, default=Path("runs/scaling"), help="run folders go here (replaced)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per training run")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    procs = [int(p) for p in args.procs.split(",")]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    rows = []
    for item in args.run:
        domain, _, recipe = item.partition(":")
        if not recipe:
            parser.error(f"--run {item}: give DOMAIN:RECIPE, e.g. speech:paper")
        rows += measure(domain, recipe, procs, args)
        if args.out:  # rewritten after every domain: a cut-short run keeps what it measured
            Path(args.out).write_text(render(rows, args, command))
    print(render(rows, args, command))


if __name__ == "__main__":
    main()
