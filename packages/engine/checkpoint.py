"""Checkpoints: `model.safetensors` + `config.json` (+ training state for resume), written atomically.

Layout of a run directory:

    run/
      recipe.yaml              the resolved recipe
      log.jsonl                one JSON record per epoch
      metrics.json             final validation and test metrics
      checkpoints/
        epoch-0007/            model.safetensors, config.json, state.safetensors, state.json
        best-0005/             model.safetensors, config.json  (selected on validation)
        LATEST, BEST           one line each: the folder name (replaced atomically)

Each folder is written under a temporary name and renamed into place; the pointer files are replaced
after that. A kill at any moment leaves the previous pointers naming complete folders. Nothing here
unpickles: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import panformer
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path, write_text_atomic
from panformer.engine.tensors import map_tensors

FORMAT = "panformer-checkpoint/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint folder."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def domain(self) -> str:
        return self.config["domain"]


def _numbers(value: Any) -> Any:
    """Scalar tensors as plain numbers, for JSON (a CUDA-graphed step keeps learning rates as device tensors)."""
    return map_tensors(lambda t: t.item() if t.numel() == 1 else t, value)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A name-keyed optimizer state dict -> (tensors for safetensors, the rest for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": _numbers(state["param_groups"]), "state": {}}
    for param, slots in state["state"].items():
        plain["state"][param] = {}
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim::{param}::{slot}"] = value.detach().to("cpu").contiguous()
            else:
                plain["state"][param][slot] = value
    return tensors, plain


def optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    """The name-keyed optimizer state dict saved by `save_checkpoint`, from `load_training_state`'s parts."""
    saved = plain["optimizer"]
    state: dict[str, dict[str, Any]] = {param: dict(slots) for param, slots in saved["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim::"):
            _, param, slot = key.split("::")
            state.setdefault(param, {})[slot] = value
    return {"state": state, "param_groups": saved["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    plain = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = plain["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def checkpoint_config(
    *, domain: str, recipe: dict[str, Any], info: dict[str, Any], fingerprint: str, **extra: Any
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "domain": domain,
        "panformer_version": panformer.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint,
        "recipe": recipe,
        "info": info,
        **extra,
    }


def save_checkpoint(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    scheduler: Any = None,
    progress: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint folder atomically: `weights` (full, by name; see `panformer.engine.parallel`)
    and the config; with `optimizer_state` (name-keyed, full) also what is needed to resume."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(weights, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        if optimizer_state is not None:
            optim_tensors, optim_plain = _flatten_optimizer(optimizer_state)
            rng_tensors, rng_plain = rng_state()
            save_file({**optim_tensors, **rng_tensors}, tmp / STATE_TENSORS)
            state = {
                "optimizer": optim_plain,
                "scheduler": _numbers(scheduler.state_dict()) if scheduler is not None else None,
                "rng": rng_plain,
                "progress": progress or {},
            }
            (tmp / STATE_JSON).write_text(json.dumps(state, default=float))
    return folder


def set_pointer(checkpoints: Path, name: str, target: str) -> None:
    write_text_atomic(checkpoints / name, target + "\n")


def read_pointer(checkpoints: Path, name: str) -> Path | None:
    pointer = checkpoints / name
    if not pointer.is_file():
        return None
    folder = checkpoints / pointer.read_text().strip()
    return folder if (folder / MODEL_FILE).is_file() else None


def prune(checkpoints: Path, *, keep_last: int) -> None:
    """Remove epoch folders beyond the newest `keep_last`, best folders other than the current one and
    mid-epoch folders (`epoch-E-step-S`) other than the latest."""
    latest, best = read_pointer(checkpoints, "LATEST"), read_pointer(checkpoints, "BEST")
    epochs = sorted(p for p in checkpoints.glob("epoch-*") if "-step-" not in p.name)
    doomed = epochs[:-keep_last] + [p for p in checkpoints.glob("best-*") if p != best]
    doomed += list(checkpoints.glob("epoch-*-step-*"))
    for folder in doomed:
        if folder not in (latest, best):
            shutil.rmtree(folder, ignore_errors=True)


def resolve_checkpoint(path: Path, *, which: str = "BEST") -> Path:
    """Accept a checkpoint folder, a run's `checkpoints/` folder or a run folder."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = read_pointer(folder, which) or read_pointer(folder, "LATEST")
        if found is not None:
            return found
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; give a run folder written by `train`")
    raise UserError(f"{path} holds no checkpoint ({MODEL_FILE} + {CONFIG_FILE}); give a run folder written by `train`")


def load_checkpoint(path: Path, *, domain: str | None = None, which: str = "BEST") -> Checkpoint:
    folder = resolve_checkpoint(path, which=which)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        weights = load_file(folder / MODEL_FILE)
    except (OSError, json.JSONDecodeError, SafetensorError) as err:
        raise UserError(f"checkpoint {folder} is unreadable ({err}); retrain or pick another run") from None
    if config.get("format") != FORMAT:
        raise UserError(f"checkpoint {folder} is not a Panformer checkpoint ({CONFIG_FILE} lacks format {FORMAT})")
    if domain is not None and config.get("domain") != domain:
        raise UserError(
            f"checkpoint {folder} was trained by the '{config.get('domain')}' domain; "
            f"use panformer-{config.get('domain')} (or panformer {config.get('domain')}) with it"
        )
    return Checkpoint(path=folder, config=config, weights=weights)


def load_training_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        tensors = load_file(folder / STATE_TENSORS)
        state = json.loads((folder / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError, SafetensorError) as err:
        raise UserError(f"cannot resume from {folder}: training state unreadable ({err})") from None
    return tensors, state
