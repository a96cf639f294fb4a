"""Time-series classification: recipe, splits, model, loss, metrics and predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Metrics, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.metrics import ClassificationMetrics
from panformer.engine.plots import confusion_matrix_of, confusion_matrix_png
from panformer.engine.runlog import console
from panformer.timeseries.data import (
    SeriesDataset,
    aeon_data_dir,
    collate_series,
    fingerprint,
    load_split,
    read_series_file,
    stratified_split,
)
from panformer.timeseries.invariance import Invariances, detect_invariances
from panformer.timeseries.models.common import Ensemble
from panformer.timeseries.models.inception_transformer import InceptionTransformer
from panformer.timeseries.models.mptsnet import MPTSNet, dominant_periods
from panformer.timeseries.models.transformer import SeriesTransformer
from panformer.timeseries.models.vsformer import VSFormer
from panformer.timeseries.plots import class_counts_png


class AugmentConfig(StrictModel):
    """Random changes to each training series, drawn afresh every batch (never at validation or test)."""

    scale: float = Field(0.0, ge=0, description="std of the log-amplitude factor, per series and channel")
    shift: float = Field(0.0, ge=0, lt=1, description="largest shift in time, as a fraction of the length")
    circular_shift: bool | Literal["auto"] = Field(
        False, description="roll each series by a random number of steps (its start carries no meaning); 'auto': "
        "with reflections, when the training split shows both (panformer.timeseries.invariance)"
    )
    mirror: bool | Literal["auto"] = Field(
        False, description="reverse half of the series at random; 'auto': with circular shifts, when the training "
        "split shows both (closed outlines)"
    )


class ClassificationData(StrictModel):
    source: str = Field(
        "aeon:BasicMotions", description="aeon:<Name>, a <Name>_TRAIN.ts/.tsv/.arff/.csv/.parquet file or a folder"
    )
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="held out of the training split to choose the checkpoint; 0: train on all "
        "of it and keep the final epoch"
    )
    augment: AugmentConfig = AugmentConfig()


class EncoderConfig(StrictModel):
    dim: int = Field(64, ge=8)
    depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    members: int = Field(
        1, ge=1, description="independently initialised copies trained side by side; their probabilities are averaged"
    )


class TransformerConfig(EncoderConfig):
    """The plain patch transformer (baseline)."""

    name: Literal["transformer"] = "transformer"
    patch: int = Field(8, ge=1)
    stride: int = Field(4, ge=1)
    signature_depth: int | None = Field(None, ge=1, le=3, description="add path-signature features")


class VSFormerConfig(TransformerConfig):
    """Value- and shape-aware tokens, prior-enhanced attention."""

    name: Literal["vsformer"] = "vsformer"


class MPTSNetConfig(EncoderConfig):
    """Multiscale periodic segments from FFT-found periods."""

    name: Literal["mptsnet"] = "mptsnet"
    depth: int = Field(1, ge=1)
    num_periods: int = Field(3, ge=1)
    kernel: int = Field(3, ge=1)


class InceptionTransformerConfig(EncoderConfig):
    """InceptionTime-style convolution stem under a transformer with a learned relative position bias."""

    name: Literal["inception_transformer"] = "inception_transformer"
    stem_depth: int = Field(3, ge=1)
    kernels: tuple[int, int, int] = (9, 19, 39)
    dilations: tuple[int, int, int] = Field(
        (1, 1, 1), description="spacing of each kernel's taps (span (kernel - 1) * dilation + 1)"
    )
    max_tokens: int = Field(64, ge=1, description="the stem's output is average-pooled to at most this many tokens")
    stem_length: int = Field(512, ge=1, description="longer series: convolved at full resolution, the "
                             "rectified features averaged over windows to at most this many steps")


ModelConfig = Annotated[
    TransformerConfig | VSFormerConfig | MPTSNetConfig | InceptionTransformerConfig, Field(discriminator="name")
]


class ClassificationRecipe(Recipe):
    default_model_name = "transformer"

    domain: Literal["timeseries"] = "timeseries"
    task: Literal["classification"] = "classification"
    data: ClassificationData = ClassificationData()
    model: ModelConfig = TransformerConfig()


@torch.no_grad()
def class_mean_series(model: VSFormer, train: SeriesDataset) -> Tensor:
    """The standardised average series of each class (K, C, T), padded to the longest."""
    batch = collate_series([train[i] for i in range(len(train))])
    x = model.normalise(batch["values"], batch["lengths"])
    targets = batch["target"]
    return torch.stack([x[targets == k].mean(0) for k in targets.unique(sorted=True)])


def augmented(values: Tensor, lengths: Tensor, cfg: AugmentConfig) -> Tensor:
    """values (B, C, T) in data units, lengths (B,) -> a randomly transformed copy (same shape).

    Scaling about each series' own mean (its level stays), then reflection (half the series, when
    `mirror`), a circular shift by any number of steps (when `circular_shift`) and a shift of r steps
    that repeats the edge value into the steps it uncovers. Each series moves within its own length;
    steps past it are left as they are (the model masks them). Draws from torch's global generator,
    which the engine seeds and checkpoints. 'auto' options must be resolved first (`resolved_augment`).
    """
    if cfg.scale == 0 and cfg.shift == 0 and not cfg.circular_shift and not cfg.mirror:
        return values
    B, C, T = values.shape
    device = values.device
    steps = torch.arange(T, device=device)[None, :]  # (1, T)
    valid = (steps < lengths[:, None])[:, None, :]  # (B, 1, T)
    last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
    # Scaling first: it commutes with the moves below (which read steps within the series).
    if cfg.scale > 0:
        mean = torch.where(valid, values, torch.nan).nanmean(-1, keepdim=True).nan_to_num()
        factor = torch.exp(cfg.scale * torch.randn(B, C, 1, device=device))
        values = mean + (values - mean) * factor
    source = steps.expand(B, T)  # the step each output step reads, (B, T)
    if cfg.mirror is True:
        flip = torch.rand(B, 1, device=device) < 0.5
        source = torch.where(flip, (last - source).clamp(min=0), source)
    if cfg.circular_shift is True:
        roll = (torch.rand(B, 1, device=device) * lengths[:, None].clamp(min=1)).long()
        source = (source + roll) % lengths[:, None].clamp(min=1)
    if cfg.shift > 0:
        most = (cfg.shift * lengths.float()).floor()
        offset = ((torch.rand(B, device=device) * 2 - 1) * most).round().long()  # (B,) in [-most, most]
        moved = torch.minimum((steps - offset[:, None]).clamp(min=0), last)
        source = source.gather(-1, moved)
    if cfg.shift > 0 or cfg.circular_shift is True or cfg.mirror is True:
        values = torch.where(valid, values.gather(-1, source[:, None, :].expand(B, C, T)), values)
    return values


def resolved_augment(cfg: AugmentConfig, invariances: Invariances | None) -> AugmentConfig:
    """`cfg` with its 'auto' symmetries replaced by what the training split showed."""
    found = invariances or Invariances(False, False, 0.0, 0.0, 0.0, note="not tested")
    return cfg.model_copy(update={
        "circular_shift": found.circular_shift if cfg.circular_shift == "auto" else cfg.circular_shift,
        "mirror": found.mirror if cfg.mirror == "auto" else cfg.mirror,
    })


class ClassificationTask(Task):
    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, augment: AugmentConfig | None = None) -> None:
        self.augment = augment or AugmentConfig()

    def load_splits(self, recipe: ClassificationRecipe, *, source: str | None = None) -> Splits:
        source = source or recipe.data.source
        train_set, test_set = load_split(source, "train"), load_split(source, "test")
        for part in (train_set, test_set):
            if part.labels is None:
                read_as = f" (read as {part.layout})" if part.layout else ""
                raise UserError(
                    f"--data {source}: {part.source} has no class labels{read_as}; add a label/class/target "
                    f"column, or use the UCR layout (no header row, class label first)"
                )
        if train_set.channels != test_set.channels:
            raise UserError(f"--data {source}: train has {train_set.channels} channels, test {test_set.channels}")
        classes = sorted(set(train_set.labels.tolist()))
        unknown = sorted(set(test_set.labels.tolist()) - set(classes))
        if unknown:
            raise UserError(f"--data {source}: test labels {unknown} never occur in training")
        index = {c: i for i, c in enumerate(classes)}
        targets = np.array([index[c] for c in train_set.labels])
        test_targets = np.array([index[c] for c in test_set.labels])
        train_idx, val_idx = stratified_split(train_set.labels, fraction=recipe.data.val_fraction, seed=recipe.train.seed)
        train_series = [train_set.series[i] for i in train_idx]
        invariances = None
        if "auto" in (self.augment.circular_shift, self.augment.mirror):
            invariances = detect_invariances(train_series, targets[train_idx], seed=recipe.train.seed)
            console.print(f"[dim]{source}: {invariances.summary()}[/dim]")
        self.augment = resolved_augment(self.augment, invariances)
        # Normalisation is fitted on the training part only (not validation, never test).
        stacked = np.concatenate(train_series, axis=1)
        info = {
            "task": "classification",
            "classes": classes,
            "channels": train_set.channels,
            "max_length": max(train_set.max_length, test_set.max_length),
            "mean": np.nanmean(stacked, axis=1).tolist(),
            "std": np.nanstd(stacked, axis=1).tolist(),
            "source": source,
            "augment": self.augment.model_dump(mode="json"),
        }
        if invariances is not None:
            info["symmetries"] = invariances.as_dict()
        if isinstance(recipe.model, MPTSNetConfig):
            periods, amplitudes = dominant_periods(
                train_series, k=recipe.model.num_periods, max_length=train_set.max_length
            )
            info |= {"periods": periods, "amplitudes": amplitudes}
        return Splits(
            train=SeriesDataset(train_series, targets[train_idx]),
            val=SeriesDataset([train_set.series[i] for i in val_idx], targets[val_idx]),
            test=SeriesDataset(test_set.series, test_targets),
            info=info,
            fingerprint=fingerprint(train_set, test_set),
        )

    def build_model(self, recipe: ClassificationRecipe, info: dict[str, Any]) -> nn.Module:
        members = [self._build_member(recipe, info) for _ in range(recipe.model.members)]
        return members[0] if len(members) == 1 else Ensemble(members)

    def _build_member(self, recipe: ClassificationRecipe, info: dict[str, Any]) -> nn.Module:
        cfg = recipe.model
        common = dict(
            channels=info["channels"], num_classes=len(info["classes"]), dim=cfg.dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
        )
        if isinstance(cfg, MPTSNetConfig):
            model = MPTSNet(**common, periods=info["periods"], amplitudes=info["amplitudes"], kernel=cfg.kernel)
        elif isinstance(cfg, InceptionTransformerConfig):
            model = InceptionTransformer(**common, max_length=info["max_length"], stem_depth=cfg.stem_depth,
                                         kernels=cfg.kernels, dilations=cfg.dilations, max_tokens=cfg.max_tokens, stem_length=cfg.stem_length)
        else:
            model_type = VSFormer if isinstance(cfg, VSFormerConfig) else SeriesTransformer
            model = model_type(**common, max_length=info["max_length"], patch=cfg.patch, stride=cfg.stride,
                               signature_depth=cfg.signature_depth)
        model.normalise.fit(torch.tensor(info["mean"]), torch.tensor(info["std"]))
        return model

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        for member in model.members if isinstance(model, Ensemble) else [model]:
            if isinstance(member, VSFormer):
                member.fit_prior(class_mean_series(member, splits.train))

    def collate(self, items: list[Any]) -> dict[str, Tensor]:
        return collate_series(items)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        values = batch["values"]
        if model.training:
            values = augmented(values, batch["lengths"], self.augment)
        if isinstance(model, Ensemble) and model.training:
            # Each member learns on its own loss (as if trained alone); they share only the batches.
            member_logits = model.member_logits(values, batch["lengths"]).float()  # (M, B, K)
            target = batch["target"].repeat(member_logits.shape[0])
            loss = nn.functional.cross_entropy(member_logits.flatten(0, 1), target)
            return loss, Ensemble.combine(member_logits).detach()
        logits = model(values, batch["lengths"])
        return nn.functional.cross_entropy(logits.float(), batch["target"]), logits.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return ClassificationMetrics(len(info["classes"]))

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: ClassificationRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
    ) -> list[Path]:
        if output_path.suffix.lower() not in (".csv", ".parquet"):
            raise UserError(f"--output {output_path}: write predictions to a .csv or .parquet file")
        series = read_series_file(input_path)
        if series.channels != info["channels"]:
            raise UserError(
                f"{input_path}: {series.channels} channels, but the model was trained on {info['channels']}"
            )
        if series.max_length > info["max_length"]:
            raise UserError(
                f"{input_path}: series of {series.max_length} steps; the model takes at most {info['max_length']}"
            )
        classes = info["classes"]
        dataset = SeriesDataset(series.series, np.zeros(len(series.series), dtype=int))
        rows = []
        for start in range(0, len(dataset), recipe.train.batch_size):
            batch = collate_series([dataset[i] for i in range(start, min(start + recipe.train.batch_size, len(dataset)))])
            logits = model(batch["values"].to(device), batch["lengths"].to(device))
            rows.extend(torch.softmax(logits.float(), -1).cpu().tolist())
        probabilities = np.asarray(rows)
        table = pd.DataFrame({"index": np.arange(len(rows)), "label": [classes[i] for i in probabilities.argmax(1)]})
        if series.labels is not None:
            table["true_label"] = series.labels
        for k, name in enumerate(classes):
            table[f"prob_{name}"] = probabilities[:, k].round(6)
        with atomic_path(output_path) as tmp:
            if output_path.suffix.lower() == ".csv":
                table.to_csv(tmp, index=False)
            else:
                table.to_parquet(tmp, index=False)
        written = [output_path]
        if plot and series.labels is not None and set(series.labels) <= set(classes):
            # Labelled input: the confusion matrix says more than any per-series picture.
            index = {c: i for i, c in enumerate(classes)}
            confusion = np.zeros((len(classes), len(classes)), dtype=int)
            for true, probs in zip(series.labels, rows, strict=True):
                confusion[index[true], int(np.argmax(probs))] += 1
            written.append(confusion_matrix_png(confusion, classes, output_path.with_suffix(".confusion.png")))
        elif plot:
            written.append(class_counts_png(np.asarray(rows), classes, output_path.with_suffix(".classes.png")))
        return written

    def evaluation_plot(
        self,
        model: nn.Module,
        dataset: Dataset,
        info: dict[str, Any],
        *,
        path: Path,
        batch_size: int,
        device: torch.device,
    ) -> Path:
        return confusion_matrix_of(self, model, dataset, info, path=path, batch_size=batch_size, device=device)

    def demo_input(self, recipe: ClassificationRecipe, info: dict[str, Any], workdir: Path) -> Path:
        # The test file of the bundled dataset: the demo predicts on data it never trained on.
        name = recipe.data.source.removeprefix("aeon:")
        return aeon_data_dir() / name / f"{name}_TEST.ts"
