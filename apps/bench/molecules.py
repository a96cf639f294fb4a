"""Molecules benchmark: the graph-free coordinate transformer next to SchNet, on the same data and budget.

Every model trains on the same MMFF94-labelled NCI set (RDKit's bundled SMILES, ETKDG conformers), the
same split by molecule (test molecules are never seen in training), the same epochs, batch size and
learning-rate schedule. Each selects its checkpoint on validation energy MAE and is scored once on test.
The table also carries the trivial baselines (per-element reference energies only; zero forces) and each
model's rotation errors; with several seeds every cell is mean ± std over seeds.

Data: without `--data` the first `--molecules` NCI SMILES are labelled here with RDKit (cached); with
`--data FILE` (.npz from `panformer-molecules label --output FILE.npz`, readable with numpy alone) the
first `--molecules` molecules of the file are used, so a machine without RDKit or ASE can run it.

Learning curve: `--sizes 150,300,600` trains every model on that many training molecules (nested subsets:
the smaller sets are subsets of the larger ones) while the validation and test molecules stay the same.
Without `--sizes`, all training molecules are used and one more run gives the transformer SchNet's wall-
clock time (the paper compares at equal compute).

Invariance: `--invariance RUN [RUN ...]` trains nothing; for each trained run it measures, on the run's test
split, every inference mode of `panformer.molecules.frames` (none, canonical, frames): the energy change and
force equivariance error over 3 random rotations of every structure, predict time, and test accuracy, and
appends that table to `--out` (issue 23).

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/molecules.py --out apps/bench/results/molecules-cpu.md
    python apps/bench/molecules.py --data .dev/molecules/nci-8c.npz --device cuda --jobs 8 \\
        --sizes 300,1000,2400 --seeds 2 --models direct schnet --out $OUT/molecules-h200.md
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine import checkpoint as ckpt
from panformer.engine.cli import load_model
from panformer.engine.config import load_recipe
from panformer.engine.files import write_text_atomic
from panformer.engine.trainer import Trainer, evaluate_model, select_device
from panformer.molecules.domain import (
    MoleculeRecipe,
    MoleculesDomain,
    drop_force_outliers,
    invariance_report,
    molecule_split,
    nci_dataset,
)
from panformer.molecules.frames import INVARIANCE_MODES
from panformer.molecules.structures import Structure, read_structures, write_npz

TRANSFORMER = ["model.dim=64", "model.depth=3", "model.num_heads=4"]
# key -> (table name, recipe, overrides). Small models of similar size, so that the comparison is about the prior.
MODELS: dict[str, tuple[str, str, list[str]]] = {
    "direct": ("coordinate transformer (direct forces)", "coordformer", TRANSFORMER),
    "conservative": ("coordinate transformer (conservative)", "coordformer-conservative", TRANSFORMER),
    "distance-bias": ("coordinate transformer + distance bias", "coordformer-distance-bias", TRANSFORMER),
    "schnet": ("SchNet (torch-geometric)", "schnet", ["model.hidden=64", "model.filters=64",
                                                      "model.interactions=3", "model.gaussians=25",
                                                      "model.cutoff=5.0"]),
}
EQUAL_TIME = "equal-time"
COLUMNS = [
    ("energy MAE (eV/mol)", "energy_mae_eV", "{:.3f}"),
    ("energy MAE (meV/atom)", "energy_mae_meV_per_atom", "{:.1f}"),
    ("force MAE (eV/Å)", "force_mae_eV_A", "{:.3f}"),
    ("force cosine", "force_cosine", "{:.3f}"),
    ("rotation ΔE (meV/mol)", "rotation_energy_change_meV", "{:.2f}"),
    ("equivariance error (eV/Å)", "equivariance_error_eV_A", "{:.4f}"),
]


@dataclass(frozen=True)
class Job:
    """One training run: a model at one training-set size and seed."""

    model: str  # a MODELS key, or EQUAL_TIME (the direct transformer with SchNet's wall clock)
    size: int | None  # training molecules (None: all)
    seed: int
    epochs: int
    overrides: tuple[str, ...]
    deadline: float | None = None  # time.time() after which the run stops at the end of its epoch


@dataclass
class Outcome:
    job: Job
    val: dict[str, float]
    test: dict[str, float]
    seconds: float
    params: int
    best_epoch: int
    info: dict[str, Any] = field(default_factory=dict)
    cut_at: int | None = None  # the epoch at which --time-limit stopped the run (None: it ran all its epochs)


class TimeUp(Exception):
    """Raised by the epoch callback when the bench's time limit has passed."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"time limit reached after epoch {epoch}")
        self.epoch = epoch


def run_job(job: Job, workdir: str) -> Outcome:
    """Train one model (in this process) and score its validation-selected checkpoint once on test."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    domain = MoleculesDomain()
    recipe_key = "direct" if job.model == EQUAL_TIME else job.model
    _, recipe_name, overrides = MODELS[recipe_key]
    recipe = load_recipe(MoleculeRecipe, "molecules", recipe_name,
                         overrides=[*job.overrides, *overrides, f"train.epochs={job.epochs}",
                                    f"train.seed={job.seed}"])
    run_dir = Path(workdir) / f"{job.model}-{job.size}-{job.seed}"
    task = domain.task(recipe)
    splits = task.load_splits(recipe)
    params = sum(p.numel() for p in task.build_model(recipe, splits.info).parameters())

    def stop_when_time_is_up(epoch: int, val: dict[str, float]) -> None:
        if job.deadline is not None and time.time() > job.deadline and epoch < job.epochs - 1:
            raise TimeUp(epoch)

    started = time.perf_counter()
    try:
        result = Trainer(domain, recipe, run_dir=run_dir, callbacks=[stop_when_time_is_up]).fit()
    except TimeUp as stop:
        # Score the best checkpoint so far, as the trainer would have at the end (marked in the table).
        recipe_train = recipe.train
        device = select_device(recipe_train.device)
        model = task.build_model(recipe, splits.info).to(device)
        saved = ckpt.load_checkpoint(run_dir / "checkpoints")
        model.load_state_dict(saved.weights)
        test = evaluate_model(task, model, splits.test, splits.info, batch_size=recipe_train.batch_size,
                              device=device, precision=recipe_train.precision, metrics=task.test_metrics(splits.info))
        return Outcome(job, saved.config["val_metrics"], test, time.perf_counter() - started, params,
                       saved.config["epoch"], splits.info, cut_at=stop.epoch)
    return Outcome(job, result.val_metrics, result.test_metrics, result.seconds, params, result.best_epoch,
                   splits.info)


def pool_structures(
    path: Path, *, molecules: int | None, conformers: int, max_force: float | None = None
) -> list[Structure]:
    """The first `molecules` molecules of a labelled file (file order), at most `conformers` conformers each,
    without structures whose largest force exceeds `max_force` eV/Å (labelling outliers)."""
    structures = drop_force_outliers(read_structures(path).structures, max_force, where=str(path))
    order: dict[str, int] = {}
    kept = []
    for s in structures:
        if s.molecule not in order:
            if molecules is not None and len(order) >= molecules:
                continue
            order[s.molecule] = 0
        if order[s.molecule] < conformers:
            order[s.molecule] += 1
            kept.append(s)
    return kept


def mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def size_label(size: int | None, info: dict[str, Any]) -> str:
    return f"{info['molecules']['train']} mol / {info['structures']['train']} structures"


def render(args: argparse.Namespace, outcomes: list[Outcome], jobs: list[Job], *, command: str,
           hardware: str, pool_info: str, seconds: float) -> str:
    """The results file: one table per training-set size, then the learning curve (with several sizes)."""
    done = {(o.job.model, o.job.size) for o in outcomes}
    sizes = sorted({j.size for j in jobs}, key=lambda s: (s is None, s or 0))
    lines = [
        "# Molecules: coordinate transformer vs SchNet on MMFF94-labelled NCI molecules (held-out molecules)",
        "",
        f"Command: `{command}`  ",
        f"Hardware: {hardware}; {seconds:.0f} s wall clock so far; "
        f"{sum(1 for _ in outcomes)} of {len(jobs)} runs finished.  ",
        f"Data: {pool_info}  ",
        f"Budget: the same for every model at one size: batch {args.batch_size}, lr {args.lr} (warmup + cosine), "
        f"{args.epochs} epochs (at least {args.min_steps} optimizer steps: small sets get more epochs), precision "
        f"{args.precision}, rotation augmentation, structures with a force above {args.max_force:g} eV/Å dropped, "
        "the same loss (energy and force errors divided by the training "
        "set's residual-energy std and force RMS, weights 5 : 10); checkpoint selected on validation energy MAE "
        f"(shown), test scored once. Seeds: {args.seeds} from {args.first_seed} (training seed; the split is "
        "fixed); cells are mean ± std over seeds. Train time is wall clock"
        + (f", {args.jobs} runs sharing the device at a time" if args.jobs > 1 else "") + ".",
        "",
    ]
    for size in sizes:
        rows = [o for o in outcomes if o.job.size == size]
        if not rows:
            continue
        info = rows[0].info
        epochs = sorted({o.job.epochs for o in rows if o.job.model != EQUAL_TIME})
        lines += [f"## Training set: {size_label(size, info)} (val {info['molecules']['val']} / test "
                  f"{info['molecules']['test']} molecules), {', '.join(map(str, epochs))} epochs", "",
                  "| model | seeds | val energy MAE (eV/mol) | " + " | ".join(c for c, _, _ in COLUMNS)
                  + " | params | best epoch | train time (s) |",
                  "|---|" + "---|" * (len(COLUMNS) + 5)]
        for key in [*MODELS, EQUAL_TIME]:
            group = [o for o in rows if o.job.model == key]
            if not group:
                continue
            name = (f"coordinate transformer (direct), SchNet's wall clock: {group[0].job.epochs} epochs"
                    if key == EQUAL_TIME else MODELS[key][0])
            cells = [mean_std([o.test[k] for o in group if k in o.test], fmt) for _, k, fmt in COLUMNS]
            lines.append(f"| {name} | {len(group)} | {mean_std([o.val['energy_mae_eV'] for o in group], '{:.3f}')} | "
                         + " | ".join(cells) + f" | {group[0].params:,} | "
                         + ", ".join(str(o.best_epoch) + (f" (cut at {o.cut_at})" if o.cut_at is not None else "")
                                     for o in group) + " | "
                         + mean_std([o.seconds for o in group], "{:.0f}") + " |")
        base = rows[0]
        lines += [f"| trivial baseline (element reference energies; zero forces) | | "
                  f"{base.val['baseline_energy_mae_eV']:.3f} | {base.test['baseline_energy_mae_eV']:.3f} | | "
                  f"{base.test['baseline_force_mae_eV_A']:.3f} | | | | | | |", ""]
    transformer = next((k for k in ("direct", "distance-bias", "conservative") if k in args.models), None)
    if len(sizes) > 1 and transformer and "schnet" in args.models:
        lines += ["## Learning curve (test, mean ± std over seeds): does the gap to SchNet close with data?", "",
                  f"| training set | {MODELS[transformer][0]} energy MAE (eV/mol) | SchNet energy MAE (eV/mol) | "
                  "ratio | transformer force MAE (eV/Å) | SchNet force MAE (eV/Å) | ratio | trivial energy MAE |",
                  "|---|---|---|---|---|---|---|---|"]
        for size in sizes:
            if not {(transformer, size), ("schnet", size)} <= done:
                continue
            t = [o for o in outcomes if o.job.size == size and o.job.model == transformer]
            s = [o for o in outcomes if o.job.size == size and o.job.model == "schnet"]

            def avg(group: list[Outcome], key: str) -> float:
                return statistics.mean(o.test[key] for o in group)

            cut = " (runs cut by --time-limit)" if any(o.cut_at is not None for o in [*t, *s]) else ""
            lines.append(
                f"| {size_label(size, t[0].info)}{cut} | "
                f"{mean_std([o.test['energy_mae_eV'] for o in t], '{:.3f}')} | "
                f"{mean_std([o.test['energy_mae_eV'] for o in s], '{:.3f}')} | "
                f"{avg(t, 'energy_mae_eV') / avg(s, 'energy_mae_eV'):.2f} | "
                f"{mean_std([o.test['force_mae_eV_A'] for o in t], '{:.3f}')} | "
                f"{mean_std([o.test['force_mae_eV_A'] for o in s], '{:.3f}')} | "
                f"{avg(t, 'force_mae_eV_A') / avg(s, 'force_mae_eV_A'):.2f} | "
                f"{t[0].test['baseline_energy_mae_eV']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def invariance_section(runs: list[Path], *, command: str) -> str:
    """A markdown section: for each run, every invariance mode's rotation errors, predict time and test scores
    (the run's own test split; the same structures and rotations for every mode)."""
    device = torch.device("cpu")
    lines = ["", f"## Rotation invariance at inference (issue 23), {time.strftime('%Y-%m-%d')}", "",
             f"Command: `{command}`  ",
             f"Hardware: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), CPU; the machine was shared with other jobs, so times are wall "
             "clock under load.  ",
             "Rotation errors: mean over 3 random rotations of every test structure of |E(Rx) - E(x)| (eV per "
             "molecule) and of |F(Rx) - R F(x)| per atom (eV/Å); predict time per structure is the mean over those "
             "4 passes. Test scores with each mode (checkpoint selected on validation with the recipe's mode).", ""]
    for run in runs:
        loaded = load_model(MoleculesDomain(), run, device)
        splits = loaded.task.load_splits(loaded.recipe, source=loaded.config.get("data_source"))
        structures, batch_size = splits.test.structures, loaded.recipe.train.batch_size
        cfg = loaded.recipe.model
        lines += [f"### `{run}`: {cfg.name}" + (f", {cfg.forces} forces, dim {cfg.dim}, depth {cfg.depth}"
                                                if cfg.name == "coordformer" else "")
                  + f"; test {len(structures)} structures of {splits.info['molecules']['test']} molecules", "",
                  "| mode | rotation ΔE (eV/mol) | force equivariance error (eV/Å) | predict (ms/structure) | "
                  "time vs none | test energy MAE (eV/mol) | test force MAE (eV/Å) |", "|---|---|---|---|---|---|---|"]
        rows = {}
        for mode in INVARIANCE_MODES[::-1]:  # none first: the others' times are relative to it
            loaded.task.invariance = mode
            report = invariance_report(loaded.model, structures, invariance=mode, device=device,
                                       batch_size=batch_size)
            test = evaluate_model(loaded.task, loaded.model, splits.test, loaded.info, batch_size=batch_size,
                                  device=device, metrics=loaded.task.test_metrics(loaded.info))
            rows[mode] = report
            lines.append(f"| {mode} | {report['invariance_energy_error_eV']:.2e} | "
                         f"{report['invariance_force_error_eV_A']:.2e} | {report['predict_ms_per_structure']:.2f} | "
                         f"{report['predict_ms_per_structure'] / rows['none']['predict_ms_per_structure']:.1f}x | "
                         f"{test['energy_mae_eV']:.3f} | {test['force_mae_eV_A']:.3f} |")
            print(lines[-1], flush=True)
        energies = np.array([s.energy for s in structures])
        lines += ["", f"Spread of the test energies across structures (std): {energies.std():.3f} eV; mean atomic "
                  f"force magnitude {np.mean([np.linalg.norm(s.forces, axis=1).mean() for s in structures]):.3f} "
                  "eV/Å.", ""]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="a labelled set (.npz from `label`, or .extxyz); default: label NCI SMILES with RDKit")
    parser.add_argument("--molecules", type=int, default=None,
                        help="first N molecules (NCI SMILES without --data [default 300]; of the file with --data "
                        "[default all])")
    parser.add_argument("--conformers", type=int, default=4, help="conformers per molecule (at most)")
    parser.add_argument("--max-atoms", type=int, default=32, help="without --data: skip larger molecules")
    parser.add_argument("--max-force", type=float, default=50.0,
                        help="drop structures with an atomic force above this (eV/Å): the few broken ETKDG "
                        "conformers (10^2-10^5 eV/Å) would swamp every force loss and metric")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated training-set sizes in molecules (learning curve); default: all")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per model and size")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--min-steps", type=int, default=0,
                        help="give small training sets more epochs, up to this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 autocast rounds coordinates to ~0.01 Å; fp32 is the default")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds: runs still going then stop after their epoch and are scored from their best "
                        "checkpoint so far (marked 'cut at' in the table)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-equal-time", dest="equal_time", action="store_false",
                        help="skip the extra run of the transformer for SchNet's wall-clock time")
    parser.add_argument("--invariance", type=Path, nargs="+", metavar="RUN", default=None,
                        help="train nothing: measure these trained runs' inference invariance modes on their test "
                        "split and append the table to --out")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/molecules-cpu.md"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    command = " ".join(["python apps/bench/molecules.py", *sys.argv[1:]])
    if args.invariance is not None:
        previous = args.out.read_text() if args.out.is_file() else ""
        write_text_atomic(args.out, previous.rstrip("\n") + "\n" + invariance_section(args.invariance, command=command))
        return
    if args.device.startswith("cuda"):
        hardware = (f"{torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}"
                    if torch.cuda.is_available() else "CUDA requested but not available")
    else:
        hardware = (f"{cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} thread(s); the machine was shared with other jobs, so seconds are "
                    "wall clock under load")
    with TemporaryDirectory() as tmp:
        shared = ["data.val_fraction=0.15", "data.test_fraction=0.15", f"data.max_force={args.max_force}",
                  f"train.batch_size={args.batch_size}",
                  f"train.lr={args.lr}", "train.warmup_ratio=0.1", f"train.device={args.device}",
                  f"train.precision={args.precision}"]
        if args.data is not None:
            pool = pool_structures(args.data, molecules=args.molecules, conformers=args.conformers,
                                   max_force=args.max_force)
            source = write_npz(Path(tmp) / "pool.npz", pool)
            shared.append(f"data.source={source}")
            pool_info = (f"the first {len({s.molecule for s in pool})} molecules of `{args.data}` (RDKit's bundled "
                         f"NCI SMILES, ETKDG conformers, ≤ {max(len(s) for s in pool)} atoms with H, MMFF94 energies and forces "
                         "in eV, eV/Å), "
                         f"≤ {args.conformers} conformers each, {len(pool)} structures; split by molecule.")
        else:
            molecules = args.molecules or 300
            shared += [f"data.molecules={molecules}", f"data.conformers={args.conformers}",
                       f"data.max_atoms={args.max_atoms}", "data.mmff_steps=0"]
            recipe = load_recipe(MoleculeRecipe, "molecules", "coordformer", overrides=shared)
            pool = drop_force_outliers(read_structures(nci_dataset(recipe.data)).structures,  # labels them once
                                       args.max_force, where="nci")
            pool_info = (f"the first {molecules} SMILES of RDKit's bundled NCI list, {args.conformers} ETKDG "
                         f"conformers each (≤ {args.max_atoms} atoms with H), labelled with MMFF94 energies and "
                         "forces (eV, eV/Å); split by molecule.")
        sizes: list[int | None] = [int(s) for s in args.sizes.split(",")] if args.sizes else [None]
        # Steps per epoch at each size, from the same split the task makes (seeded by data.label_seed=0).
        jobs: list[Job] = []
        for size in sizes:
            train = molecule_split(pool, val_fraction=0.15, test_fraction=0.15, seed=0, train_molecules=size)["train"]
            steps = math.ceil(len(train) / args.batch_size)
            epochs = max(args.epochs, math.ceil(args.min_steps / steps))
            overrides = (*shared, *([f"data.train_molecules={size}"] if size is not None else []))
            deadline = time.time() + args.time_limit if args.time_limit else None
            jobs += [Job(model, size, seed, epochs, overrides, deadline)
                     for seed in range(args.first_seed, args.first_seed + args.seeds) for model in args.models]
        if args.jobs > 1:  # largest runs first: with several at a time, the last to finish is then a short one
            jobs.sort(key=lambda j: (-(j.size or 10**9), j.model != "schnet", j.seed))
        else:  # one seed's whole curve first: an interrupted run still leaves every size
            jobs.sort(key=lambda j: (j.seed, j.size or 10**9))
        outcomes: list[Outcome] = []

        def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            text = render(args, outcomes, jobs, command=command, hardware=hardware, pool_info=pool_info,
                          seconds=time.perf_counter() - started)
            write_text_atomic(args.out, text)  # after every run: a cut-off run still leaves its table
            print(f"[{time.perf_counter() - started:.0f}s] {outcome.job.model} size={outcome.job.size} "
                  f"seed={outcome.job.seed}: test energy MAE {outcome.test['energy_mae_eV']:.3f} eV/mol, "
                  f"force MAE {outcome.test['force_mae_eV_A']:.3f} eV/Å ({outcome.seconds:.0f} s)", flush=True)

        failed: list[str] = []

        def report_failure(job: Job, err: BaseException) -> None:
            # One broken run (say, out of memory) must not take the others' results with it.
            failed.append(f"{job.model} size={job.size} seed={job.seed}: {type(err).__name__}: {err}")
            print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
            if len(failed) == 1:  # the first one's traceback (from the worker process, if any) says why
                traceback.print_exception(err, file=sys.stderr)

        if args.jobs == 1:
            for job in jobs:
                try:
                    record(run_job(job, tmp))
                except Exception as err:
                    report_failure(job, err)
        else:
            with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool_executor:
                futures = {pool_executor.submit(run_job, job, tmp): job for job in jobs}
                for future in as_completed(futures):
                    try:
                        record(future.result())
                    except Exception as err:
                        report_failure(futures[future], err)
        finished = {o.job.model for o in outcomes}
        if args.equal_time and sizes == [None] and {"direct", "schnet"} <= finished:
            # The paper's comparison is at equal compute: give the transformer SchNet's wall clock.
            def seconds(model: str) -> float:
                return statistics.mean(o.seconds for o in outcomes if o.job.model == model)

            base = next(j for j in jobs if j.model == "direct")
            epochs = max(1, round(base.epochs * seconds("schnet") / seconds("direct")))
            extra = [Job(EQUAL_TIME, None, seed, epochs, base.overrides)
                     for seed in range(args.first_seed, args.first_seed + args.seeds)]
            jobs += extra
            for job in extra:
                record(run_job(job, tmp))
    if outcomes:
        print(Path(args.out).read_text())
    if failed:
        sys.exit(f"{len(failed)} run(s) failed; first: {failed[0]}")


if __name__ == "__main__":
    main()
