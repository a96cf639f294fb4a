"""The sign-language domain: recipe types, the isolated-sign classification task and the registry entry."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, RecipeChoice, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.metrics import ClassificationMetrics
from panformer.engine.plots import confusion_matrix_of
from panformer.sign.data import (
    ASL_SIGNS_COLUMNS,
    SignDataset,
    collate,
    fingerprint,
    is_autsl,
    read_autsl,
    read_label_file,
    signer_split,
)
from panformer.sign.extract import VIDEO_SUFFIXES, ExtractionWarning
from panformer.sign.features import FEATURES, Augment, sequence_features
from panformer.sign.landmarks import read_landmarks
from panformer.sign.model import SignClassifier, hybrid_blocks, tslformer_blocks
from panformer.sign.synthetic import SyntheticSpec, build_synthetic

# --- recipe --------------------------------------------------------------------------------------


class SyntheticConfig(StrictModel):
    """The synthetic dataset (`panformer.sign.synthetic`): made-up signs, not a sign language."""

    signs: int = Field(10, ge=2, le=10)
    signers: int = Field(24, ge=3)
    repetitions: int = Field(3, ge=1)
    seed: int = 0


class AugmentConfig(StrictModel):
    rotate_degrees: float = Field(15.0, ge=0)
    scale: float = Field(0.15, ge=0, lt=1)
    shift: float = Field(0.05, ge=0)
    time_warp: float = Field(0.25, ge=0, lt=1)
    mirror_probability: float = Field(0.5, ge=0, le=1)


class SignData(StrictModel):
    source: str = Field(
        "synthetic",
        description="synthetic, a label CSV (path, label, signer) or a folder holding labels.csv or the ASL Signs "
        "train.csv (path, participant_id, sequence_id, sign)",
    )
    cache_dir: str = Field("runs/data/sign/synthetic", description="where the synthetic dataset is written")
    synthetic: SyntheticConfig = SyntheticConfig()
    max_frames: int = Field(64, ge=4, description="longer sequences are uniformly subsampled")
    val_signers: float = Field(0.15, gt=0, lt=1, description="fraction of signers held out for validation")
    test_signers: float = Field(0.15, gt=0, lt=1, description="fraction of signers held out for testing")
    augment: AugmentConfig | None = AugmentConfig()
    top_k: int = Field(5, ge=1, description="predict: signs listed per input")


class EncoderConfig(StrictModel):
    dim: int = Field(192, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    sigma_reparam: bool = Field(False, description="σReparam attention projections (spectrally normalised, learned "
                                "scale), against attention entropy collapse in deep encoders")


class TSLFormerConfig(EncoderConfig):
    """TSLFormer: one token per frame, a plain transformer encoder."""

    name: Literal["tslformer"] = "tslformer"


class HybridConfig(EncoderConfig):
    """Depthwise 1-D convolution blocks followed by a transformer block, `depth` times."""

    name: Literal["hybrid"] = "hybrid"
    kernel: int = Field(17, ge=3)
    convs_per_stage: int = Field(3, ge=1)


ModelConfig = Annotated[TSLFormerConfig | HybridConfig, Field(discriminator="name")]


class SignRecipe(Recipe):
    default_model_name = "tslformer"

    domain: Literal["sign"] = "sign"
    data: SignData = SignData()
    model: ModelConfig = TSLFormerConfig()


def build_classifier(cfg: TSLFormerConfig | HybridConfig, *, num_classes: int, max_frames: int) -> SignClassifier:
    if isinstance(cfg, HybridConfig):
        blocks, kernel = hybrid_blocks(cfg.depth, convs_per_stage=cfg.convs_per_stage), cfg.kernel
    else:
        blocks, kernel = tslformer_blocks(cfg.depth), 3
    return SignClassifier(
        in_features=FEATURES, num_classes=num_classes, blocks=blocks, dim=cfg.dim, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, kernel=kernel, max_frames=max_frames, dropout=cfg.dropout,
        sigma_reparam=cfg.sigma_reparam,
    )


# --- metrics -------------------------------------------------------------------------------------


# --- the task ------------------------------------------------------------------------------------


def label_file_for(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        for name in ("labels.csv", "train.csv"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"--data {source}: the folder holds neither labels.csv, train.csv (ASL Signs) nor "
                        "train_labels.csv (AUTSL)")
    if path.suffix.lower() != ".csv":
        raise UserError(f"--data {source}: give synthetic, a label .csv or a folder with labels.csv/train.csv")
    return path


def predict_inputs(input_path: Path) -> list[Path]:
    """Landmark files (or videos) to classify: one file, or every such file of a folder."""
    if input_path.is_dir():
        found = sorted(p for p in input_path.iterdir() if p.suffix.lower() in (".parquet", *VIDEO_SUFFIXES))
        if not found:
            raise UserError(f"--input {input_path}: the folder holds no .parquet landmark files or videos")
        return found
    return [input_path]


class SignClassificationTask(Task):
    monitor = "accuracy"
    monitor_mode = "max"

    def load_splits(self, recipe: SignRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        if source == "synthetic":
            labels = build_synthetic(Path(data.cache_dir), SyntheticSpec(**data.synthetic.model_dump()))
            items = read_label_file(labels)
        elif is_autsl(Path(source)):
            items = read_autsl(Path(source))
        else:
            items = read_label_file(label_file_for(source))
        groups = signer_split(items, val_fraction=data.val_signers, test_fraction=data.test_signers,
                              seed=recipe.train.seed)
        classes = sorted({item.label for item in items})
        aug = Augment(**data.augment.model_dump()) if data.augment is not None else None
        return Splits(
            train=SignDataset(groups["train"], classes, max_frames=data.max_frames, augmentation=aug),
            val=SignDataset(groups["val"], classes, max_frames=data.max_frames, augmentation=None),
            test=SignDataset(groups["test"], classes, max_frames=data.max_frames, augmentation=None),
            info={"classes": classes, "max_frames": data.max_frames, "source": source,
                  "signers": {split: sorted({i.signer for i in group}) for split, group in groups.items()}},
            fingerprint=fingerprint(items),
        )

    def epoch_log(self, splits: Splits) -> dict[str, float]:
        """How many landmark files turned out unreadable so far (each reported in one line when met)."""
        return {"skipped_items": sum(len(d.skipped) for d in (splits.train, splits.val, splits.test))}

    def build_model(self, recipe: SignRecipe, info: dict[str, Any]) -> nn.Module:
        return build_classifier(recipe.model, num_classes=len(info["classes"]), max_frames=info["max_frames"])

    def collate(self, items: list[Any]) -> dict[str, Tensor]:
        return collate(items)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = model(batch["features"], batch["valid"])
        return nn.functional.cross_entropy(logits.float(), batch["target"]), logits.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return ClassificationMetrics(len(info["classes"]), top_k=(5,))

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: SignRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
        models_dir: Path | None = None,
    ) -> list[Path]:
        """Top-k signs with probabilities per input, as CSV rows `file, rank, sign, probability`."""
        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        inputs = predict_inputs(input_path)
        # Read (and extract) everything before writing anything: bad input leaves no output.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sequences = [self._landmarks(path, models_dir=models_dir) for path in inputs]
        encoded = []
        for path, landmarks in zip(inputs, sequences, strict=True):
            features, valid = sequence_features(landmarks, max_frames=info["max_frames"])
            if not valid.any():
                raise UserError(f"{path}: no person seen in any frame; nothing to classify")
            encoded.append((path, features, valid))
        for warning in caught:
            if issubclass(warning.category, ExtractionWarning):
                print(f"warning: {warning.message}", file=sys.stderr)  # e.g. pose only: still classified
        classes = info["classes"]
        k = min(recipe.data.top_k, len(classes))
        model.eval()
        rows = []
        for path, features, valid in encoded:
            logits = model(torch.from_numpy(features)[None].to(device), torch.from_numpy(valid)[None].to(device))
            probs, index = torch.softmax(logits.float(), -1)[0].topk(k)
            for rank, (p, i) in enumerate(zip(probs.tolist(), index.tolist(), strict=True), start=1):
                rows.append({"file": path.name, "rank": rank, "sign": classes[i], "probability": round(p, 6)})
        with atomic_path(output_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        return [output_path]

    def _landmarks(self, path: Path, *, models_dir: Path | None):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            from panformer.sign.extract import extract_video_landmarks

            return extract_video_landmarks(path, models_dir=models_dir)
        if path.suffix.lower() != ".parquet":
            raise UserError(f"--input {path}: give a landmark .parquet file, a video ({', '.join(VIDEO_SUFFIXES)}) "
                            "or a folder of them")
        return read_landmarks(path)

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

    def demo_input(self, recipe: SignRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The first test sequence: a signer the model never trained on."""
        return self.load_splits(recipe).test.items[0].path


class SignDomain(Domain):
    name = "sign"
    recipe_type = SignRecipe
    cli_app = "panformer.sign.cli:app"

    def task(self, recipe: Recipe) -> Task:
        return SignClassificationTask()

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None or data == "synthetic":
            where = "no --data" if data is None else "synthetic"
            return RecipeChoice("tslformer", f"{where}: the synthetic signs, TSLFormer-style, trains on a CPU")
        path = Path(data)
        if is_autsl(path):
            return RecipeChoice("autsl", "an AUTSL folder (train_labels.csv)")
        if path.is_dir() and (path / "train.csv").is_file():
            return RecipeChoice("asl-signs", "an ASL Signs folder (train.csv + landmark files)")
        if path.is_dir() and (path / "labels.csv").is_file():
            return RecipeChoice("tslformer", "a landmark folder with labels.csv (path, label, signer)")
        if path.is_file() and path.suffix.lower() == ".csv":
            try:
                columns = set(pd.read_csv(path, nrows=0).columns)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                raise self.unrecognised_data(data, "not a readable CSV") from None
            if set(ASL_SIGNS_COLUMNS) <= columns:
                return RecipeChoice("asl-signs", "an ASL Signs label file (path, participant_id, sign)")
            return RecipeChoice("tslformer", "a landmark label file (path, label, signer)")
        files = list(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
        if any(f.suffix.lower() in VIDEO_SUFFIXES for f in files):
            raise self.unrecognised_data(data, f"videos; run `panformer-sign extract {data} --output LANDMARKS` "
                                               "first, then list the landmark files in a labels.csv (path, label, signer)")
        if any(f.suffix.lower() == ".parquet" for f in files):
            raise self.unrecognised_data(data, "landmark files without labels; list them in a labels.csv "
                                               "(path, label, signer) and give its folder")
        problem = "no such file or folder" if not path.exists() else "no labels.csv, train.csv or train_labels.csv"
        raise self.unrecognised_data(data, problem)


