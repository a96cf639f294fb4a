"""Recipes: YAML files validated by pydantic, with `--set a.b=c` overrides from the command line.

A recipe has four sections: `domain`, `data` and `model` (typed by the domain) and `train` (the engine's,
below). Unknown keys are errors, so a typo in a recipe or an override never passes silently.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from panformer.engine.errors import UserError

RECIPES_ENV = "PANFORMER_RECIPES"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainConfig(StrictModel):
    """Everything the engine's training loop needs, the same for every domain."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    minutes: float | None = Field(
        None, gt=0, description="train for this much training time (validation and checkpoints not counted) "
        "instead of whole passes: the `epochs` validations fall at equal shares of it, passes over the training "
        "split (reshuffled each time) follow one another as long as it lasts, and the warmup + cosine schedule "
        "follows the time spent; single process",
    )
    compile: bool = False
    cuda_graphs: bool = Field(
        False, description="on CUDA, replay each training step from a CUDA graph (one launch instead of hundreds: "
        "for small models whose steps wait on the host); batches must keep their shapes (others run eagerly); "
        "single process, no grad_accum, no compile; ignored on the CPU",
    )
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_workers: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_minutes: float | None = Field(
        10.0, ge=0, description="also checkpoint inside an epoch after this many minutes since the last "
        "checkpoint, so that an interrupted long epoch resumes where it stopped (0: after every optimizer step; "
        "null: at epoch ends only; single-process runs)",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: replicate the model (DDP) or shard it (FSDP2)"
    )
    log_attention_entropy: bool = Field(
        False, description="log each attention layer's mean attention entropy (nats) on the first validation batch "
        "per epoch (materialises that batch's attention scores)"
    )

    @model_validator(mode="after")
    def _one_whole_step_per_graph(self) -> TrainConfig:
        if self.cuda_graphs and (self.grad_accum > 1 or self.compile):
            raise ValueError("cuda_graphs captures one whole optimizer step: use it without grad_accum > 1 and "
                             "without compile")
        return self


class Recipe(StrictModel):
    """A whole run's configuration. Domains subclass it to type `data` and `model`.

    A domain with several models types `model` as a union discriminated by `model.name`;
    `default_model_name` lets recipes leave `name` out for the default model.
    """

    default_model_name: ClassVar[str | None] = None

    domain: str
    description: str = ""
    data: StrictModel
    model: StrictModel
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_model_name(cls, raw: Any) -> Any:
        if cls.default_model_name and isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw["model"].setdefault("name", cls.default_model_name)
        return raw


def repo_recipes_dir() -> Path:
    """`apps/recipes` of the checkout this package runs from (or `$PANFORMER_RECIPES`)."""
    if env := os.environ.get(RECIPES_ENV):
        return Path(env)
    import panformer

    return Path(panformer.__file__).resolve().parent.parent / "apps" / "recipes"


def list_recipes(domain: str) -> dict[str, Path]:
    folder = repo_recipes_dir() / domain
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def recipe_path(domain: str, name_or_path: str) -> Path:
    """Resolve a recipe name (`basicmotions`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist; give an existing .yaml path or a recipe name")
        return path
    known = list_recipes(domain)
    if name_or_path not in known:
        names = ", ".join(known) or "none"
        raise UserError(
            f"unknown recipe '{name_or_path}' for {domain}; known recipes: {names} "
            f"(or give a path to a .yaml file)"
        )
    return known[name_or_path]


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, except that dates and timestamps stay the text written (`2010-01-01`).

    Recipe fields hold dates as strings (SQL cut-offs, ...) or as pydantic dates, which parse that text;
    a `datetime.date` object would be rejected by every string field.
    """


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str) -> Any:
    """Parse recipe YAML (a file or one `--set` value) with `RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)  # safe: a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003). Values are read as YAML scalars (dates as text)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    try:
        parsed = read_yaml(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str):  # YAML 1.1 reads `3e-4` as a string
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    hint = "remove it or check the spelling" if first["type"] == "extra_forbidden" else "fix its value"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"recipe {source}: {where}: {first['msg']}; {hint}{more}"


RecipeChooser = Callable[[dict[str, Any]], type[Recipe]]


def validate_recipe(choose: type[Recipe] | RecipeChooser, raw: dict[str, Any], *, source: str) -> Recipe:
    """Validate `raw` as a recipe; `choose` is the recipe class or picks one from the raw dict."""
    recipe_type = choose if isinstance(choose, type) else choose(raw)
    try:
        return recipe_type.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source)) from None


def load_recipe(
    choose: type[Recipe] | RecipeChooser, domain: str, name_or_path: str, *, overrides: Sequence[str] = ()
) -> Recipe:
    path = recipe_path(domain, name_or_path)
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" line {line + 1}" if line is not None else ""
        raise UserError(f"recipe {path}{at}: not valid YAML; fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path}: expected a mapping with domain/data/model/train sections")
    raw.setdefault("domain", domain)
    if raw["domain"] != domain:
        raise UserError(f"recipe {path} is for the '{raw['domain']}' domain, not '{domain}'")
    raw = apply_overrides(raw, list(overrides))
    return validate_recipe(choose, raw, source=str(path))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
