"""`panformer-molecules`: the engine's CLI contract plus `label` (SMILES -> MMFF-labelled conformers)
and `relax` (geometry optimisation with a trained model as the ASE calculator).

`predict` is the engine's, extended with --skip-bad (skip and report bad records of the input).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, run_predict, user_errors_exit_2
from panformer.engine.errors import UserError
from panformer.molecules.domain import MoleculesDomain

domain = MoleculesDomain()
INVARIANCE_HELP = ("frames (exactly rotation invariant, 4 passes), canonical (1 pass) or none (the raw model) "
                   "[default: the checkpoint recipe's model.invariance, frames]")


@user_errors_exit_2
def predict(
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    input: Annotated[Path, typer.Option("--input", help="structures: .extxyz/.xyz (or anything ASE reads), .sdf/.mol, "
                                        ".npz or a .structures store")],
    output: Annotated[Path, typer.Option(help="energies (eV) and forces (eV/Å): .extxyz, .npz or .csv (one row "
                                         "per atom)")],
    plot: Annotated[bool, typer.Option("--plot", help="also write a parity plot (PNG) beside the output")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip (and report) bad records")] = False,
    invariance: Annotated[str | None, typer.Option(help=INVARIANCE_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "auto",
) -> None:
    """Predict energies and forces for every structure of a file."""
    if not input.exists():
        raise UserError(f"--input {input} does not exist")
    run_predict(domain, checkpoint=checkpoint, input_path=input, output_path=output, device=device,
                plot=plot, skip_bad=skip_bad, invariance=invariance)


app = build_cli(domain, predict=predict)


@app.command()
@user_errors_exit_2
def label(
    source: Annotated[Path, typer.Argument(help="a SMILES list (.smi: SMILES [id] per line) or an .sdf file")],
    output: Annotated[Path, typer.Option(help="extended XYZ (.extxyz), Panformer arrays (.npz) or a Panformer "
                                              "store (NAME.structures: a folder, memory-mapped in training, for "
                                              "large sets; .npz and stores need no RDKit/ASE) with energies (eV) "
                                              "and forces (eV/Å); an interrupted run resumes")],
    conformers: Annotated[int, typer.Option(min=1, help="ETKDG conformers per molecule")] = 4,
    mmff_steps: Annotated[int, typer.Option(min=0, help="MMFF relaxation steps after embedding")] = 0,
    max_atoms: Annotated[int, typer.Option(min=2, help="skip molecules with more atoms (with H)")] = 40,
    rattle: Annotated[float, typer.Option(min=0, help="Gaussian displacement (Å) of every atom after relaxing")] = 0.0,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N molecules")] = None,
    seed: Annotated[int, typer.Option(help="ETKDG random seed")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="parallel processes [default: up to 4]")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip unreadable SDF records (SMILES are always skipped with a count)")] = False,
) -> None:
    """Label molecules with RDKit ETKDG conformers and MMFF94 energies and forces."""
    from panformer.molecules.label import LabelOptions, label_file

    started = time.perf_counter()
    options = LabelOptions(conformers=conformers, mmff_steps=mmff_steps, max_atoms=max_atoms, rattle=rattle,
                           seed=seed)
    summary = label_file(source, output, options=options, limit=limit, workers=workers, skip_bad=skip_bad)
    if summary.skipped:
        typer.echo(f"warning: {len(summary.skipped)} molecules skipped (first: {summary.skipped[0]})", err=True)
    typer.echo(f"{output}: {summary.structures} conformers of {summary.molecules} molecules "
               f"in {time.perf_counter() - started:.1f}s", err=True)
    typer.echo(str(output))


@app.command()
@user_errors_exit_2
def relax(
    input: Annotated[Path, typer.Argument(help="structures to optimise (.extxyz/.xyz/.sdf/...)")],
    checkpoint: Annotated[Path, typer.Option(help="run folder or checkpoint folder")],
    output: Annotated[Path, typer.Option(help="final structures (.extxyz) with energies and forces")],
    trajectory: Annotated[Path | None, typer.Option(help="also write every optimisation step (.extxyz)")] = None,
    fmax: Annotated[float, typer.Option(min=0, help="stop when the largest force is below this (eV/Å)")] = 0.05,
    steps: Annotated[int, typer.Option(min=1, help="at most this many BFGS steps per structure")] = 200,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip (and report) bad records")] = False,
    invariance: Annotated[str | None, typer.Option(help=INVARIANCE_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = "cpu",
) -> None:
    """Optimise geometries with ASE's BFGS, using the trained model as the calculator."""
    from panformer.molecules.calculator import relax_file

    for path, line in relax_file(input, checkpoint=checkpoint, output=output, trajectory=trajectory, fmax=fmax,
                                 steps=steps, skip_bad=skip_bad, device=device, invariance=invariance):
        if line:
            typer.echo(line, err=True)
        if path is not None:
            typer.echo(str(path))


if __name__ == "__main__":
    app()
