"""Does every domain's `train` resume after being stopped inside an epoch, with the weights of a run never stopped?

For each domain, three runs of its `demo` recipe (embedded data) through the real CLI, in subprocesses, with
checkpoints after every optimizer step (`train.checkpoint_minutes=0`):

- straight: trained to the end;
- killed: SIGKILL as soon as a mid-epoch checkpoint exists (a crash or an OOM kill), then `train --resume`;
- ctrl-c: SIGINT at the same point (must exit 130 with the resume command), then `train --resume`.

The final weights (the LATEST checkpoint's `model.safetensors`) of the resumed runs are compared tensor by tensor
with the straight run's.

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/resume.py --out apps/bench/results/resume-cpu.md
    .venv/bin/python apps/bench/resume.py --domains timeseries,graphs --epochs 2
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hardware import cpu_name  # apps/bench/hardware.py
from safetensors.torch import load_file

DOMAINS = ["timeseries", "speech", "sign", "molecules", "graphs", "music", "relational"]


def cli(domain: str) -> list[str]:
    return [str(Path(sys.executable).with_name(f"panformer-{domain}"))]


def latest(run: Path) -> Path | None:
    pointer = run / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    return run / "checkpoints" / pointer.read_text().strip()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    folder = latest(run)
    assert folder is not None, f"{run}: no LATEST checkpoint"
    return load_file(folder / "model.safetensors")


def interrupted(domain: str, run: Path, train: list[str], how: signal.Signals, timeout: float) -> tuple[str, int]:
    """Start `train`, send `how` once a mid-epoch checkpoint exists; returns (where it stopped, exit code)."""
    process = subprocess.Popen([*cli(domain), "train", *train, "--out", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        folder = latest(run)
        if folder is not None and "-step-" in folder.name:
            process.send_signal(how)
            break
        time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError(f"{domain}: no mid-epoch checkpoint within {timeout:.0f} s (or the run ended first)")
    _, stderr = process.communicate(timeout=timeout)
    code = process.returncode
    if how == signal.SIGINT and code != 130:
        raise RuntimeError(f"{domain}: Ctrl-C exited {code}, not 130: {stderr.strip()[-500:]}")
    stopped = latest(run)
    return (stopped.name if stopped else "none"), code


def check(domain: str, root: Path, args: argparse.Namespace) -> dict:
    overrides = ["--set", f"train.epochs={args.epochs}", "--set", "train.checkpoint_minutes=0", "--device", "cpu"]
    train = ["--recipe", "demo", *overrides]
    row: dict = {"domain": domain}
    started = time.perf_counter()
    subprocess.run([*cli(domain), "train", *train, "--out", str(root / "straight")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row["straight_s"] = time.perf_counter() - started
    straight = final_weights(root / "straight")
    for name, how in (("killed", signal.SIGKILL), ("ctrl-c", signal.SIGINT)):
        run = root / name
        stopped, code = interrupted(domain, run, train, how, args.timeout)
        resumed = subprocess.run([*cli(domain), "train", "--resume", str(run), "--device", "cpu"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if resumed.returncode != 0:
            row[name] = f"resume failed (exit {resumed.returncode}): {resumed.stderr.strip().splitlines()[-1]}"
            continue
        weights = final_weights(run)
        same = weights.keys() == straight.keys() and all(torch.equal(weights[k], straight[k]) for k in straight)
        gap = max((float((weights[k].float() - straight[k].float()).abs().max()) for k in straight), default=0.0)
        row[name] = f"stopped at {stopped} (exit {code}); resumed: " + (
            "identical weights" if same else f"weights differ (max |Δ| {gap:.2e})")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each demo run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a mid-epoch checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    rows = []
    for domain in args.domains.split(","):
        with tempfile.TemporaryDirectory(prefix=f"resume-{domain}-") as tmp:
            try:
                rows.append(check(domain, Path(tmp), args))
            except Exception as error:  # one domain's failure is a row of the table, not the end of the run
                rows.append({"domain": domain, "killed": f"failed: {error}", "ctrl-c": "", "straight_s": float("nan")})
        print(rows[-1], flush=True)
    command = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
    lines = ["# Resume inside an epoch: every domain's demo recipe, stopped and resumed through the CLI", "",
             f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} {command}`  ",
             f"Hardware: {cpu_name()}; torch {torch.__version__}; {args.epochs} epochs per run, a checkpoint after "
             "every optimizer step (`train.checkpoint_minutes=0`), loader workers 0.", "",
             "| domain | uninterrupted run (s) | SIGKILL mid-epoch, then `--resume` | Ctrl-C (SIGINT), then `--resume` |",
             "|---|---|---|---|"]
    lines += [f"| {r['domain']} | {r['straight_s']:.0f} | {r.get('killed', '')} | {r.get('ctrl-c', '')} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
