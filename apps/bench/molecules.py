"""Molecules benchmark: the graph-free coordinate transformer against SchNet, a learning curve at equal GPU time.

Every model trains on the same MMFF94-labelled NCI conformers and the same split by molecule (test molecules
are never seen in training). `--sizes` gives training-set sizes in structures: the training set at each size
is the first training molecules of one fixed shuffled order until they hold that many structures, so the
sets are nested, while validation and test stay the same (`data.train_structures`). Each model selects its
checkpoint on validation energy MAE and is scored once on test; every cell is mean ± std over `--seeds`.

Budget: at each size every run gets the same training time (`--seconds`, one value per size), kept by the
trainer itself (`train.minutes`): passes over the training set follow one another until the run's own training
time is spent, the recipe's warmup + cosine schedule following the time, with `--validations` validations at
equal shares of it (runs that share a device start together). Calibrating a pass's time first and training
that many passes missed by 15% for SchNet on a shared H100 (its pass ran faster in training than in the
calibration); a clock cannot miss. Validation and test time are outside the budget. With `--jobs N` the runs
of one size run at once as N processes on one device, so they share it equally; sizes follow one another, the
largest first (a bench cut short keeps the size that matters most). `--epochs N` gives every run N passes instead of a time budget.

Models: `direct` and `conservative` are the `coordformer-paper` recipe (the paper's settings as far as they
apply here) with direct or -dE/dx forces, `distance-bias` its distance-bias ablation, `schnet` the
torch-geometric SchNet recipe; the transformers are scored in the canonical frame (exactly rotation
invariant, one pass). The first seed's transformer at the largest size also gets the paper's attention
analysis (attention weight against interatomic distance; `evaluate --plot` writes the same).

Data: `--data` is a `.structures` store or `.npz` archive from `panformer-molecules label` (numpy only: no
RDKit or ASE needed); an archive is turned into a store in a temporary folder once, and every run maps it.
Without `--data` the first `--molecules` NCI SMILES are labelled here with RDKit.

Outputs, beside `--out X.md` (rewritten after every run): X-runs.json (every run's numbers), X-curve.png (test
MAE against training structures), X-attention-distance.png/.csv/.json. Without matplotlib the PNGs are left
out and `--plots-from X.md` draws them later from the saved numbers.

Invariance: `--invariance RUN [RUN ...]` trains nothing; for each trained run it measures, on the run's test
split, every inference mode of `panformer.molecules.frames` (none, canonical, frames) and appends that table
to `--out` (issue 23).

    python apps/bench/molecules.py --data .dev/molecules/nci-5k-16c-32a.npz --device cuda --jobs 6 \\
        --sizes 1000,4000,16000,all --seconds 10,20,40,120 --seeds 2 --out $OUT/molecules-h100.md
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/molecules.py --data FILE.npz --molecules 60 --sizes 200,all \\
        --seconds 5 --seeds 2 --device cpu --out /tmp/molecules-cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine.cli import load_model
from panformer.engine.config import Recipe, load_recipe
from panformer.engine.domain import Splits
from panformer.engine.errors import UserError
from panformer.engine.files import write_text_atomic
from panformer.engine.plots import pyplot, save_png
from panformer.engine.runlog import progress_bar
from panformer.engine.trainer import (
    Trainer,
    evaluate_model,
    select_device,
)
from panformer.molecules.attention_distance import plot_attention_distance
from panformer.molecules.domain import (
    EnergyForceTask,
    MoleculeRecipe,
    MoleculesDomain,
    attention_distance_files,
    below_max_force,
    invariance_report,
    nci_dataset,
    split_by_molecule,
)
from panformer.molecules.frames import INVARIANCE_MODES
from panformer.molecules.structures import (
    STORE_SUFFIX,
    StructureArrays,
    open_store,
    read_structures,
    write_store,
)

CANONICAL = ("model.invariance=canonical",)  # transformers: exactly invariant scores at one pass per structure
# key -> (table name, recipe, overrides): each model at its own recipe's settings.
MODELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "direct": ("coordinate transformer (direct forces)", "coordformer-paper", CANONICAL),
    "conservative": ("coordinate transformer (conservative forces)", "coordformer-paper",
                     ("model.forces=conservative", *CANONICAL)),
    "distance-bias": ("coordinate transformer + distance bias (ablation)", "coordformer-paper",
                      ("model.distance_bias=true", *CANONICAL)),
    "schnet": ("SchNet (torch-geometric)", "schnet", ()),
}
DEFAULT_MODELS = ["direct", "conservative", "schnet"]
TRANSFORMERS = ("direct", "conservative", "distance-bias")
HELD_OUT = 0.1  # of the molecules, for validation and again for test (~5k structures each on the 50k set)
BARRIER_TIMEOUT = 600.0  # s a run waits for the runs beside it to start


@dataclass(frozen=True)
class Job:
    """One training run: a model at one training-set size and seed, with a time budget or a fixed pass count."""

    model: str  # a MODELS key
    size: int | None  # training structures (None: every training molecule)
    seed: int
    overrides: tuple[str, ...]  # the same for every run (data, batch size, device)
    seconds: float | None  # training-time budget (None: `passes` passes)
    passes: int | None
    validations: int  # validation passes (epochs) to spread the training over
    attention_stem: str | None = None  # also write the attention-vs-distance analysis to STEM.png/.csv/.json


@dataclass
class Outcome:
    job: Job
    val: dict[str, float]
    test: dict[str, float]
    info: dict[str, Any]
    params: int
    passes: float  # over the training set, done
    best_epoch: int
    train_seconds: float  # in training steps (what the budget buys), from the run's log
    wall_seconds: float  # the whole run: loading, training, validation, test


class PassesTask(EnergyForceTask):
    """The molecules task with `passes` passes over the training set per epoch (the training split repeated,
    shuffled as one; a fractional part trains on a fixed random subset of that size), for `--epochs N`: N passes
    with at most `--validations` validations (validating after every pass of a small set would cost more than
    the training). Statistics and `info` are those of the training set itself."""

    def __init__(self, *, passes: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.passes = passes

    def load_splits(self, recipe: MoleculeRecipe, *, source: str | None = None) -> Splits:
        splits = super().load_splits(recipe, source=source)
        train = splits.train
        whole = int(self.passes)
        part = max(round((self.passes - whole) * len(train)), 0 if whole else 1)
        extra = np.random.default_rng(recipe.train.seed).permutation(len(train))[:part]
        indices = np.concatenate([np.tile(np.arange(len(train)), whole), extra])
        return dataclasses.replace(splits, train=train.subset(indices))


class PassesDomain(MoleculesDomain):
    """The molecules domain whose task is a `PassesTask` (checkpoints stay `molecules` checkpoints)."""

    def __init__(self, passes: float) -> None:
        self.passes = passes

    def task(self, recipe: Recipe) -> PassesTask:
        task = super().task(recipe)
        return PassesTask(loss=task.loss_config, invariance=task.invariance, passes=self.passes)


def run_job(job: Job, workdir: str, barrier: Any = None) -> Outcome:
    """Train one model (in this process) and score its validation-selected checkpoint once on test.

    With a time budget the trainer itself trains for it (`train.minutes`: passes until the time is spent,
    the schedule on the time), so every run gets its budget however its speed changes while it shares the
    device; runs that share it start training together (`barrier`), so none trains alone at the end."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    _, recipe_name, model_overrides = MODELS[job.model]
    overrides = [*job.overrides, *model_overrides, f"train.seed={job.seed}",
                 *([f"data.train_structures={job.size}"] if job.size is not None else [])]
    if job.seconds is not None:
        domain: MoleculesDomain = MoleculesDomain()
        budget = [f"train.minutes={job.seconds / 60}", f"train.epochs={job.validations}"]
    else:
        assert job.passes is not None
        # At least one whole pass per epoch (validation is outside the budget but not free).
        epochs = max(1, min(job.validations, job.passes))
        domain, budget = PassesDomain(job.passes / epochs), [f"train.epochs={epochs}"]
    recipe = load_recipe(MoleculeRecipe, "molecules", recipe_name, overrides=[*overrides, *budget])
    run_dir = Path(workdir) / f"{job.model}-{job.size or 'all'}-{job.seed}"
    device = select_device(recipe.train.device)

    def start_together() -> None:  # after loading, which takes each model its own time
        if barrier is not None:  # a run that failed before starting breaks it: the others go on
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=BARRIER_TIMEOUT)

    result = Trainer(domain, recipe, run_dir=run_dir, on_train_start=start_together).fit()
    loaded = load_model(MoleculesDomain(), run_dir, device)  # the checkpoint selected on validation
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    if job.attention_stem is not None:
        test_split = loaded.task.load_splits(loaded.recipe).test
        try:
            attention_distance_files(loaded.model, test_split.structures, stem=Path(job.attention_stem),
                                     device=device, batch_size=recipe.train.batch_size)
        except UserError as err:  # no matplotlib here: the CSV and JSON are written, `--plots-from` draws later
            print(f"note: {err}", file=sys.stderr)
    return Outcome(job, result.val_metrics, result.test_metrics, loaded.info,
                   sum(p.numel() for p in loaded.model.parameters()),
                   passes=sum(row["train_samples"] for row in log) / loaded.info["structures"]["train"],
                   best_epoch=result.best_epoch, train_seconds=sum(row["train_seconds"] for row in log),
                   wall_seconds=time.perf_counter() - started)


# --- data and splits ---------------------------------------------------------------------------------


@dataclass
class Pool:
    """The structures every run reads (a store), and what the results file says about them."""

    source: Path
    description: str
    structures: int
    molecules: int
    max_atoms: int
    dropped: int  # above --max-force
    sizes: dict[int | None, dict[str, dict[str, int]]] = field(default_factory=dict)  # size -> split counts


def first_molecules(arrays: StructureArrays, count: int) -> np.ndarray:
    """Positions of the structures of the first `count` molecules, in file order."""
    molecule = np.asarray(arrays.columns["molecule"])
    _, first = np.unique(molecule, return_index=True)
    keep = set(molecule[np.sort(first)[:count]].tolist())
    return np.flatnonzero([m in keep for m in molecule.tolist()])


def prepare_pool(args: argparse.Namespace, tmp: Path) -> Pool:
    """A store of the structures to use (the given store, else one written in `tmp`), with its split per size."""
    if args.data is None:
        molecules = args.molecules or 300
        recipe = load_recipe(MoleculeRecipe, "molecules", "coordformer-paper", overrides=[
            f"data.molecules={molecules}", f"data.conformers={args.conformers}", f"data.max_atoms={args.max_atoms}"])
        path = nci_dataset(recipe.data)  # labelled with RDKit here (cached)
        what = (f"the first {molecules} SMILES of RDKit's bundled NCI list, {args.conformers} ETKDG conformers each "
                f"(≤ {args.max_atoms} atoms with H)")
        subset = None
    else:
        path, what, subset = args.data, f"`{args.data}`", args.molecules
    if not path.exists():
        raise UserError(f"--data {path} does not exist; give a {STORE_SUFFIX} store or .npz from "
                        "`panformer-molecules label`")
    arrays = open_store(path) if path.is_dir() else StructureArrays.from_structures(read_structures(path).structures)
    if subset is not None:
        what += f", its first {subset} molecules"
    if subset is not None or not path.is_dir():
        keep = first_molecules(arrays, subset) if subset is not None else np.arange(len(arrays))
        # One store for every run to map (an archive would be read whole by each).
        path = write_store(tmp / f"pool{STORE_SUFFIX}", lambda: [
            {key: np.asarray(column)[keep] for key, column in arrays.columns.items()
             if key not in ("numbers", "positions", "forces")} | _atom_columns(arrays, keep)])
        arrays = open_store(path)
    kept = below_max_force(np.asarray(arrays.columns["max_force"]), args.max_force, where=str(args.data or "nci"))
    molecule = np.asarray(arrays.columns["molecule"])[kept]
    pool = Pool(path, what, len(kept), len(np.unique(molecule)),
                int(np.asarray(arrays.columns["atoms_per_structure"]).max()), len(arrays) - len(kept))
    for size in args.sizes:
        groups = split_by_molecule(molecule, val_fraction=HELD_OUT, test_fraction=HELD_OUT, seed=0,
                                   train_structures=size)
        pool.sizes[size] = {name: {"structures": len(positions), "molecules": len(np.unique(molecule[positions]))}
                            for name, positions in groups.items()}
    return pool


def _atom_columns(arrays: StructureArrays, keep: np.ndarray) -> dict[str, np.ndarray]:
    rows, _ = arrays.atom_rows(keep)
    return {key: np.asarray(arrays.columns[key])[rows] for key in ("numbers", "positions", "forces")}


# --- the results ---------------------------------------------------------------------------------------


def mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def size_name(size: int | None, pool: Pool) -> str:
    train = pool.sizes[size]["train"]
    return f"{train['structures']:,} ({train['molecules']:,} mol)" + ("" if size is not None else ", all")


def budget_text(args: argparse.Namespace) -> str:
    if args.epochs is not None:
        return f"{args.epochs} passes over the training set per run"
    return ", ".join(f"{size_name(size, args.pool).split(' (')[0]} structures: {seconds:g} s"
                     for size, seconds in zip(args.sizes, args.seconds, strict=True))


def render(args: argparse.Namespace, outcomes: list[Outcome], jobs: list[Job], *, command: str, hardware: str,
           seconds: float, failed: list[str]) -> str:
    """The results file: the setting, one row per model and size, the learning curve."""
    pool: Pool = args.pool
    some = pool.sizes[args.sizes[-1]]
    lines = [
        "# Molecules: coordinate transformer vs SchNet, learning curve at equal GPU time (MMFF94-labelled NCI "
        "conformers, held-out molecules)", "",
        f"Command: `{command}`  ",
        f"Hardware: {hardware}; {seconds:.0f} s wall clock for the whole bench; {len(outcomes)} of {len(jobs)} runs "
        f"finished{f', {len(failed)} failed' if failed else ''}.  ",
        f"Data: {pool.description}: {pool.structures:,} structures of {pool.molecules:,} molecules (≤ "
        f"{pool.max_atoms} atoms with H; MMFF94 energies and forces in eV and eV/Å; {pool.dropped} structures with "
        f"a force above {args.max_force:g} eV/Å dropped). Split by molecule, fixed: validation "
        f"{some['val']['molecules']:,} molecules ({some['val']['structures']:,} structures), test "
        f"{some['test']['molecules']:,} ({some['test']['structures']:,}); the training sets are nested (the first "
        "training molecules of one fixed shuffled order until they hold the size).  ",
        f"Budget: equal training time per run at each size ({budget_text(args)}). The trainer itself keeps it "
        "(`train.minutes`): passes over the training set, each reshuffled, until the run's own training time is "
        f"spent, its recipe's warmup + cosine schedule following the time, validating at {args.validations} equal "
        "shares of it; validation and test are outside the budget. "
        + (f"The runs of one size ({len(args.models)} models x {args.seeds} seeds) run at once, as separate processes "
           f"sharing the one {'GPU' if args.device.startswith('cuda') else 'device'} (at most {args.jobs} at a time), "
           "so each gets an equal share of it; sizes run one after another. " if args.jobs > 1 else
           "One run at a time. ")
        + f"Batch {args.batch_size} for every model, otherwise each model's recipe: the transformers "
        "`coordformer-paper` (width 256, 6 layers, 8 heads, lr 5e-4, rotation augmentation; scored in the canonical "
        "frame, exactly rotation invariant), SchNet `schnet` (128 channels, 4 interactions, cutoff 6 Å, lr 1e-3). "
        "Checkpoint selected on validation energy MAE, test scored once. Cells: mean ± std over seeds "
        f"{args.first_seed}..{args.first_seed + args.seeds - 1}.", "",
        "| training structures (molecules) | model | seeds | test energy MAE (eV/mol) | test energy MAE (meV/atom) | "
        "test force MAE (eV/Å) | val energy MAE (eV/mol) | passes done | time per pass (s) | "
        "train time (s) | params |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        rows = [o for o in outcomes if o.job.size == size]
        for key in args.models:
            group = [o for o in rows if o.job.model == key]
            if not group:
                continue
            lines.append(
                f"| {size_name(size, pool)} | {MODELS[key][0]} | {len(group)} | "
                f"{mean_std([o.test['energy_mae_eV'] for o in group], '{:.3f}')} | "
                f"{mean_std([o.test['energy_mae_meV_per_atom'] for o in group], '{:.1f}')} | "
                f"{mean_std([o.test['force_mae_eV_A'] for o in group], '{:.3f}')} | "
                f"{mean_std([o.val['energy_mae_eV'] for o in group], '{:.3f}')} | "
                f"{mean_std([float(o.passes) for o in group], '{:.1f}')} | "
                f"{mean_std([o.train_seconds / o.passes for o in group], '{:.2f}')} | "
                f"{mean_std([o.train_seconds for o in group], '{:.0f}')} | {group[0].params:,} |")
        if rows:
            lines.append(f"| {size_name(size, pool)} | trivial baseline (element reference energies; zero forces) | "
                         f"| {rows[0].test['baseline_energy_mae_eV']:.3f} | | "
                         f"{rows[0].test['baseline_force_mae_eV_A']:.3f} | | | | | |")
    lines += ["", *curve_table(args, outcomes), ""]
    if failed:
        lines += ["Failed runs: " + "; ".join(failed), ""]
    return "\n".join(lines)


def curve_table(args: argparse.Namespace, outcomes: list[Outcome]) -> list[str]:
    """The learning curve: test energy and force MAE per model and size, and the best transformer over SchNet."""
    models = [m for m in args.models if any(o.job.model == m for o in outcomes)]
    if not models:
        return []
    short = {"direct": "direct", "conservative": "conservative", "distance-bias": "+ distance bias",
             "schnet": "SchNet"}
    ratio = "schnet" in models and any(m in TRANSFORMERS for m in models)
    lines = ["## Learning curve (test, mean ± std over seeds)", "",
             "| training structures | " + " | ".join(f"{short[m]} energy (eV/mol)" for m in models)
             + (" | best transformer / SchNet energy" if ratio else "") + " | "
             + " | ".join(f"{short[m]} force (eV/Å)" for m in models) + " |",
             "|---|" + "---|" * (2 * len(models) + ratio)]
    for size in args.sizes:
        by_model = {m: [o for o in outcomes if o.job.size == size and o.job.model == m] for m in models}
        if not any(by_model.values()):
            continue
        energy = {m: [o.test["energy_mae_eV"] for o in group] for m, group in by_model.items()}
        cells = [mean_std(energy[m], "{:.3f}") for m in models]
        if ratio:
            transformer = [statistics.mean(energy[m]) for m in models if m in TRANSFORMERS and energy[m]]
            cells.append(f"{min(transformer) / statistics.mean(energy['schnet']):.2f}"
                         if transformer and energy["schnet"] else "")
        cells += [mean_std([o.test["force_mae_eV_A"] for o in by_model[m]], "{:.3f}") for m in models]
        lines.append(f"| {size_name(size, args.pool)} | " + " | ".join(cells) + " |")
    return lines


def curve_plot(records: list[dict[str, Any]], path: Path) -> Path:
    """Test energy and force MAE against training structures (log-log), one line per model (mean ± std over
    seeds), from the X-runs.json records (so a saved file replots)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    metrics = (("energy_mae_eV", "baseline_energy_mae_eV", "test energy MAE (eV/mol)"),
               ("force_mae_eV_A", "baseline_force_mae_eV_A", "test force MAE (eV/Å)"))
    sizes = sorted({r["train_structures"] for r in records})
    for key in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == key]
        x = [n for n in sizes if any(r["train_structures"] == n for r in mine)]
        for ax, (metric, _, _) in zip(axes, metrics, strict=True):
            values = [[r["test"][metric] for r in mine if r["train_structures"] == n] for n in x]
            ax.errorbar(x, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], marker="o", capsize=3,
                        label=MODELS[key][0])
    for ax, (_, baseline, name) in zip(axes, metrics, strict=True):
        trivial = [next(r["test"][baseline] for r in records if r["train_structures"] == n) for n in sizes]
        ax.plot(sizes, trivial, "k:", lw=1, label="trivial baseline (element reference energies; zero forces)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training structures")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.suptitle("equal training time per run at each size", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def draw_plots(out: Path) -> list[Path]:
    """The bench's PNGs from its saved numbers (X-runs.json, X-attention-distance.json beside `out`)."""
    runs, attention = (out.with_name(f"{out.stem}{suffix}") for suffix in ("-runs.json", "-attention-distance.json"))
    if not runs.is_file():
        raise UserError(f"--plots-from {out}: {runs} is missing; run the bench with --out {out} first")
    written = [curve_plot(json.loads(runs.read_text()), out.with_name(f"{out.stem}-curve.png"))]
    if attention.is_file():
        written.append(plot_attention_distance(json.loads(attention.read_text()), attention.with_suffix(".png")))
    return written


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    job = outcome.job
    return {"model": job.model, "size": job.size, "seed": job.seed, "budget_seconds": job.seconds,
            "train_structures": outcome.info["structures"]["train"],
            "train_molecules": outcome.info["molecules"]["train"], "passes": outcome.passes,
            "train_seconds": round(outcome.train_seconds, 2), "wall_seconds": round(outcome.wall_seconds, 2),
            "best_epoch": outcome.best_epoch, "params": outcome.params, "val": outcome.val, "test": outcome.test}


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")
        props = torch.cuda.get_device_properties(torch.device(device))
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), {os.cpu_count()} CPU cores ({cpu_name()}), "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return (f"{cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{os.environ.get('OMP_NUM_THREADS', '1')} thread(s) per run, CPU")


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




def parse_sizes(text: str | None) -> list[int | None]:
    """'1000,4000,all' -> [1000, 4000, None] (None: every training molecule), ascending."""
    if text is None:
        return [None]
    sizes: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise UserError(f"--sizes {text}: give training-set sizes in structures, e.g. 1000,4000,16000,all")
    return sorted(set(sizes), key=lambda s: (s is None, s or 0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help=f"a labelled set: a {STORE_SUFFIX} store or .npz from `panformer-molecules label`; "
                        "default: label NCI SMILES here with RDKit")
    parser.add_argument("--molecules", type=int, default=None,
                        help="only the first N molecules (NCI SMILES without --data [default 300]; of the file with "
                        "--data [default all])")
    parser.add_argument("--conformers", type=int, default=4, help="without --data: ETKDG conformers per molecule")
    parser.add_argument("--max-atoms", type=int, default=32, help="without --data: skip larger molecules")
    parser.add_argument("--max-force", type=float, default=50.0,
                        help="drop structures with an atomic force above this (eV/Å): the few broken ETKDG "
                        "conformers (10^2-10^5 eV/Å) would swamp every force loss and metric")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated training-set sizes in structures, 'all' for every training molecule "
                        "(learning curve; nested sets); default: all")
    parser.add_argument("--seconds", default="60",
                        help="training-time budget per run in seconds: one value, or one per size (comma-separated)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="instead of a time budget: this many passes over the training set per run")
    parser.add_argument("--validations", type=int, default=5,
                        help="validations per run (at most one per pass over the training set)")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per model and size")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up")
    parser.add_argument("--batch-size", type=int, default=128, help="the same for every model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs of one size at a time, as separate processes sharing the device")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--invariance", type=Path, nargs="+", metavar="RUN", default=None,
                        help="train nothing: measure these trained runs' inference invariance modes on their test "
                        "split and append the table to --out")
    parser.add_argument("--plots-from", type=Path, metavar="X.md", default=None,
                        help="train nothing: draw X-curve.png and X-attention-distance.png from the numbers a bench "
                        "run with --out X.md saved (for a machine without matplotlib)")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/molecules-cpu.md"))
    args = parser.parse_args(argv)
    args.sizes = parse_sizes(args.sizes)
    try:
        seconds = [float(s) for s in args.seconds.split(",")]
    except ValueError:
        raise UserError(f"--seconds {args.seconds}: give seconds, one value or one per size") from None
    if len(seconds) == 1:
        seconds *= len(args.sizes)
    if len(seconds) != len(args.sizes) or min(seconds) <= 0:
        raise UserError(f"--seconds {args.seconds}: give one positive value or one per size ({len(args.sizes)})")
    args.seconds = seconds
    if args.out.suffix != ".md":
        raise UserError(f"--out {args.out}: give a .md path (the plots and numbers are written beside it)")
    return args


def make_jobs(args: argparse.Namespace) -> list[Job]:
    """Every run (`run_all` runs them size by size, the largest first); the attention analysis goes to the first
    seed's first transformer at the largest size."""
    shared = (f"data.source={args.pool.source}", f"data.val_fraction={HELD_OUT}", f"data.test_fraction={HELD_OUT}",
              f"data.max_force={args.max_force}", f"train.batch_size={args.batch_size}", f"train.device={args.device}",
              "train.num_workers=0")  # batches are sliced from the store's maps, ~1 ms each: no loader workers
    analysed = next((m for m in args.models if m in TRANSFORMERS), None)
    stem = str(args.out.with_name(f"{args.out.stem}-attention-distance"))
    return [Job(model, size, seed, shared, None if args.epochs else budget, args.epochs, args.validations,
                attention_stem=stem if (model, size, seed) == (analysed, args.sizes[-1], args.first_seed) else None)
            for size, budget in zip(args.sizes, args.seconds, strict=True)
            for seed in range(args.first_seed, args.first_seed + args.seeds) for model in args.models]


def main() -> None:
    started = time.perf_counter()
    command = " ".join(["python apps/bench/molecules.py", *sys.argv[1:]])
    try:
        args = parse_args()
        if args.plots_from is not None:
            for path in draw_plots(args.plots_from):
                print(path)
            return
        if args.invariance is not None:
            previous = args.out.read_text() if args.out.is_file() else ""
            write_text_atomic(args.out, previous.rstrip("\n") + "\n" + invariance_section(args.invariance,
                                                                                           command=command))
            return
        hardware = hardware_name(args.device)
        with TemporaryDirectory() as tmp:
            args.pool = prepare_pool(args, Path(tmp))
            run_all(args, make_jobs(args), Path(tmp), command=command, hardware=hardware, started=started)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run_all(args: argparse.Namespace, jobs: list[Job], tmp: Path, *, command: str, hardware: str,
            started: float) -> None:
    """Run every job (size by size; with --jobs N, a size's runs at once) and rewrite the results after each."""
    outcomes: list[Outcome] = []
    failed: list[str] = []
    runs_path = args.out.with_name(f"{args.out.stem}-runs.json")

    def write_results() -> None:
        text = render(args, outcomes, jobs, command=command, hardware=hardware,
                      seconds=time.perf_counter() - started, failed=failed)
        write_text_atomic(args.out, text)  # after every run: a cut-off bench still leaves its table
        write_text_atomic(runs_path, json.dumps([outcome_record(o) for o in outcomes], indent=1, default=float))

    def finished(job: Job, future: Future | None, outcome: Outcome | None) -> None:
        try:
            outcome = outcome if future is None else future.result()
        except Exception as err:  # one broken run (say, out of memory) must not take the others' results with it
            failed.append(f"{job.model} size={job.size} seed={job.seed}: {type(err).__name__}: {err}")
            print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
            if len(failed) == 1:
                traceback.print_exception(err, file=sys.stderr)
            return
        assert outcome is not None
        outcomes.append(outcome)
        write_results()
        print(f"[{time.perf_counter() - started:.0f}s] {job.model} size={job.size or 'all'} seed={job.seed}: "
              f"test energy MAE {outcome.test['energy_mae_eV']:.3f} eV/mol, force MAE "
              f"{outcome.test['force_mae_eV_A']:.3f} eV/Å, {outcome.passes:.1f} passes in {outcome.train_seconds:.0f} s "
              f"of training ({outcome.wall_seconds:.0f} s in all)", flush=True)

    with progress_bar(enabled=True) as bar:
        task = bar.add_task("molecules bench (runs)", total=len(jobs), status="")
        executor = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else None
        manager = get_context("spawn").Manager() if executor is not None else None
        try:
            for size in args.sizes[::-1]:  # largest first: the size that matters most is done first
                group = [job for job in jobs if job.size == size]
                if executor is None:
                    for job in group:
                        try:
                            outcome = run_job(job, str(tmp))
                        except Exception as err:
                            failed.append(f"{job.model} size={job.size} seed={job.seed}: {type(err).__name__}: {err}")
                            traceback.print_exception(err, file=sys.stderr)
                            continue
                        finished(job, None, outcome)
                        bar.update(task, advance=1)
                else:  # the size's runs at once; the next size when they are all done
                    # Runs that share the GPU start training together (only when they all run at once).
                    barrier = manager.Barrier(len(group)) if len(group) <= args.jobs and len(group) > 1 else None
                    futures = [(job, executor.submit(run_job, job, str(tmp), barrier)) for job in group]
                    for job, future in futures:
                        finished(job, future, None)
                        bar.update(task, advance=1)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
                manager.shutdown()
    write_results()
    if outcomes:
        print(args.out.read_text())
        try:
            draw_plots(args.out)
        except UserError as err:  # e.g. no matplotlib on the GPU machine: the numbers are all written
            print(f"note: {err}; draw the plots elsewhere with `python apps/bench/molecules.py --plots-from "
                  f"{args.out}`", file=sys.stderr)
    if failed:
        sys.exit(f"{len(failed)} run(s) failed; first: {failed[0]}")


if __name__ == "__main__":
    main()
