"""Molecules benchmark: the graph-free coordinate transformer next to SchNet, on the same data and budget.

Every model trains on the same MMFF94-labelled NCI set (RDKit's bundled SMILES, ETKDG conformers,
labelled offline by `label`), the same split by molecule (test molecules are never seen in training),
the same epochs, batch size and learning-rate schedule. Each selects its checkpoint on validation energy
MAE and is scored once on test; one more run gives the transformer SchNet's wall-clock time (the paper
compares at equal compute). The table also carries the trivial baselines (per-element reference
energies only; zero forces) and each model's rotation errors.

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/molecules.py --out apps/bench/results/molecules-cpu.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine.config import load_recipe
from panformer.engine.files import write_text_atomic
from panformer.engine.trainer import Trainer
from panformer.molecules.domain import MoleculeRecipe, MoleculesDomain

# name -> (recipe, overrides). Small models of similar size, so that the comparison is about the prior.
MODELS: dict[str, tuple[str, list[str]]] = {
    "coordinate transformer (direct forces)": ("coordformer", ["model.dim=64", "model.depth=3", "model.num_heads=4"]),
    "coordinate transformer (conservative)": ("coordformer-conservative",
                                              ["model.dim=64", "model.depth=3", "model.num_heads=4"]),
    "coordinate transformer + distance bias": ("coordformer-distance-bias",
                                               ["model.dim=64", "model.depth=3", "model.num_heads=4"]),
    "SchNet (torch-geometric)": ("schnet", ["model.hidden=64", "model.filters=64", "model.interactions=3",
                                            "model.gaussians=25", "model.cutoff=5.0"]),
}
DIRECT, SCHNET = "coordinate transformer (direct forces)", "SchNet (torch-geometric)"
COLUMNS = [
    ("energy MAE (eV/mol)", "energy_mae_eV", "{:.3f}"),
    ("energy MAE (meV/atom)", "energy_mae_meV_per_atom", "{:.1f}"),
    ("force MAE (eV/Å)", "force_mae_eV_A", "{:.3f}"),
    ("force cosine", "force_cosine", "{:.3f}"),
    ("rotation ΔE (meV/mol)", "rotation_energy_change_meV", "{:.2f}"),
    ("equivariance error (eV/Å)", "equivariance_error_eV_A", "{:.4f}"),
]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=300, help="first N NCI molecules")
    parser.add_argument("--conformers", type=int, default=4)
    parser.add_argument("--max-atoms", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="a subset of: " + ", ".join(MODELS))
    parser.add_argument("--no-equal-time", dest="equal_time", action="store_false",
                        help="skip the extra run of the transformer for SchNet's wall-clock time")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/molecules-cpu.md"))
    args = parser.parse_args()

    shared = [f"data.molecules={args.molecules}", f"data.conformers={args.conformers}",
              f"data.max_atoms={args.max_atoms}", "data.mmff_steps=0", f"train.epochs={args.epochs}",
              f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.warmup_ratio=0.1",
              f"train.seed={args.seed}", "train.device=cpu"]
    domain = MoleculesDomain()
    rows, info = [], None
    with TemporaryDirectory() as tmp:
        for name in args.models:
            recipe_name, overrides = MODELS[name]
            recipe = load_recipe(MoleculeRecipe, "molecules", recipe_name, overrides=[*shared, *overrides])
            task = domain.task(recipe)
            result = Trainer(domain, recipe, run_dir=Path(tmp) / recipe_name).fit()
            info = task.load_splits(recipe).info
            params = sum(p.numel() for p in task.build_model(recipe, info).parameters())
            rows.append((name, result.test_metrics, params, result.seconds, result.val_metrics))
        if args.equal_time and {DIRECT, SCHNET} <= set(args.models):
            # The paper's comparison is at equal compute: give the transformer SchNet's wall clock.
            seconds = {name: secs for name, _, _, secs, _ in rows}
            param_counts = {name: count for name, _, count, _, _ in rows}
            epochs = max(1, round(args.epochs * seconds[SCHNET] / seconds[DIRECT]))
            recipe_name, overrides = MODELS[DIRECT]
            recipe = load_recipe(MoleculeRecipe, "molecules", recipe_name,
                                 overrides=[*shared, *overrides, f"train.epochs={epochs}"])
            result = Trainer(domain, recipe, run_dir=Path(tmp) / "equal-time").fit()
            rows.append((f"coordinate transformer (direct), SchNet's wall clock: {epochs} epochs", result.test_metrics,
                         param_counts[DIRECT], result.seconds, result.val_metrics))

    baseline, baseline_val = rows[0][1], rows[0][4]["baseline_energy_mae_eV"]
    lines = [
        "# Molecules: coordinate transformer vs SchNet on MMFF94-labelled NCI molecules (held-out molecules)",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python apps/bench/molecules.py "
        f"--molecules {args.molecules} --epochs {args.epochs}`  ",
        f"Hardware: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); the machine was shared with other jobs, so seconds are wall clock "
        "under load.  ",
        f"Data: the first {args.molecules} SMILES of RDKit's bundled NCI list, {args.conformers} ETKDG conformers "
        f"each (≤ {args.max_atoms} atoms with H), labelled with MMFF94 energies and forces (eV, eV/Å); split by "
        "molecule: {} molecules, {} structures (train/val/test).  ".format(
            "/".join(str(info["molecules"][k]) for k in ("train", "val", "test")),
            "/".join(str(info["structures"][k]) for k in ("train", "val", "test"))),
        f"Budget: the same for every model: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} (warmup + "
        "cosine), rotation augmentation, the same loss (energy and force errors divided by the training set's "
        "residual-energy std and force RMS, weights 5 : 10, chosen on validation); checkpoint selected on validation "
        "energy MAE (shown), test scored once. The last "
        "model row (if present) is the transformer again, with as many epochs as fit in SchNet's training time.",
        "",
        "| model | val energy MAE (eV/mol) | " + " | ".join(c for c, _, _ in COLUMNS) + " | params | train time (s) |",
        "|---|" + "---|" * (len(COLUMNS) + 3),
    ]
    for name, metrics, params, seconds, val in rows:
        cells = [fmt.format(metrics[key]) for _, key, fmt in COLUMNS]
        lines.append(f"| {name} | {val['energy_mae_eV']:.3f} | " + " | ".join(cells) + f" | {params:,} | {seconds:.0f} |")
    lines.append(f"| trivial baseline (element reference energies; zero forces) | {baseline_val:.3f} | "
                 f"{baseline['baseline_energy_mae_eV']:.3f} | | {baseline['baseline_force_mae_eV_A']:.3f} | | | | | |")
    lines.append("")
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
