"""The speech-separation domain: recipe types, the separation task and the domain registry entry."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import soundfile as sf
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, RecipeChoice, Splits, Task
from panformer.engine.errors import UserError
from panformer.speech.audio import (
    AUDIO_SUFFIXES,
    StreamReader,
    audio_files,
    check_not_silent,
    write_audio,
)
from panformer.speech.data import (
    FLAT_MIX,
    DynamicMixDataset,
    MixtureFiles,
    MixtureFolderDataset,
    collate,
    file_sizes,
    fingerprint,
    flat_items,
    is_librimix_root,
    librimix_items,
    speaker_folders,
)
from panformer.speech.inference import separate_stream
from panformer.speech.loss import pit_si_snr_loss
from panformer.speech.metrics import (
    best_permutation,
    pairwise_si_sdr,
    reorder,
    separation_scores,
    valid_mask,
)
from panformer.speech.model import MossFormerSeparator
from panformer.speech.scoring import SAMPLES_SOURCE, perceptual_scores, resolve_samples
from panformer.speech.synth import CorpusSpec, build_corpus

# --- recipe --------------------------------------------------------------------------------------


class SyntheticCorpusConfig(StrictModel):
    """The eSpeak NG corpus (see `panformer.speech.synth`): speakers split by voice variant."""

    train_variants: int = Field(56, ge=1)
    val_variants: int = Field(6, ge=1)
    test_variants: int = Field(8, ge=1)
    languages_per_variant: int = Field(3, ge=1)
    utterances_per_speaker: int = Field(24, ge=1)
    seed: int = 0


class SeparationData(StrictModel):
    source: str = Field(
        "espeak",
        description="espeak (synthetic corpus), utterances:<dir> (<dir>/<speaker>/*.wav, mixed on the fly), "
        "a LibriMix/WHAM! root (<split>/mix_clean, s1, s2...), a flat folder (itemN_mix.wav + itemN_sourceK.wav) "
        "or libri2mix-samples (the 18 real mixtures in ../shared/data; evaluation only)",
    )
    cache_dir: str = Field("runs/data/speech/espeak", description="where the synthetic corpus is cached")
    corpus: SyntheticCorpusConfig = SyntheticCorpusConfig()
    sample_rate: int = Field(8000, ge=1000)
    num_speakers: int = Field(2, ge=2, le=3)
    segment_seconds: float = Field(4.0, gt=0, description="training crop / dynamic-mixing window")
    eval_segment_seconds: float = Field(4.0, gt=0, description="window of the fixed dynamic-mixing val/test sets")
    train_mixtures: int = Field(2000, ge=1, description="dynamic mixing: new mixtures per epoch")
    val_mixtures: int = Field(100, ge=1)
    test_mixtures: int = Field(200, ge=1)
    gain_db: float = Field(2.5, ge=0, description="dynamic mixing: gains uniform in [-gain_db, +gain_db]")
    speaker_split: tuple[float, float] = Field((0.1, 0.1), description="utterances:<dir>: val, test speaker fractions")
    chunk_seconds: float = Field(8.0, gt=0, description="predict: chunk length for long audio")
    overlap_seconds: float = Field(1.0, ge=0, description="predict: overlap of neighbouring chunks")

    @model_validator(mode="after")
    def _overlap_fits(self) -> SeparationData:
        if 2 * self.overlap_seconds > self.chunk_seconds:
            raise ValueError("overlap_seconds must be at most half of chunk_seconds")
        return self


class MossFormerConfig(StrictModel):
    """MossFormer (v1): gated single-head joint local/global attention layers, no FSMN."""

    name: Literal["mossformer"] = "mossformer"
    filters: int = Field(512, ge=1)
    kernel_size: int = Field(16, ge=2)
    dim: int = Field(512, ge=8)
    num_layers: int = Field(24, ge=1)
    chunk_size: int = Field(256, ge=1)
    query_key_dim: int = Field(128, ge=2)
    expansion_factor: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class MossFormer2Config(MossFormerConfig):
    """MossFormer2: each attention layer followed by a gated dilated FSMN memory block."""

    name: Literal["mossformer2"] = "mossformer2"
    fsmn_channels: int = Field(256, ge=1)
    fsmn_order: int = Field(20, ge=1)
    fsmn_depth: int = Field(2, ge=1)


ModelConfig = Annotated[MossFormer2Config | MossFormerConfig, Field(discriminator="name")]


class SeparationRecipe(Recipe):
    default_model_name = "mossformer2"

    domain: Literal["speech"] = "speech"
    data: SeparationData = SeparationData()
    model: ModelConfig = MossFormer2Config()


def build_separator(cfg: MossFormerConfig, *, num_speakers: int) -> MossFormerSeparator:
    fsmn = isinstance(cfg, MossFormer2Config)
    return MossFormerSeparator(
        num_speakers=num_speakers, filters=cfg.filters, kernel_size=cfg.kernel_size, dim=cfg.dim,
        num_layers=cfg.num_layers, chunk_size=cfg.chunk_size, query_key_dim=cfg.query_key_dim,
        expansion_factor=cfg.expansion_factor, dropout=cfg.dropout,
        fsmn_channels=cfg.fsmn_channels if fsmn else None,
        fsmn_order=cfg.fsmn_order if fsmn else 20, fsmn_depth=cfg.fsmn_depth if fsmn else 2,
    )


# --- metrics -------------------------------------------------------------------------------------


class SeparationMetrics(Metrics):
    """Mean SI-SDR, SI-SDRi, SDR and SDRi over items (each with its best speaker permutation), and with
    `perceptual_rate` also PESQ and STOI at that sample rate where the `pesq` / `pystoi` packages import."""

    def __init__(self, *, perceptual_rate: int | None = None) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.perceptual_rate = perceptual_rate

    def update(self, batch: dict[str, Tensor], outputs: Tensor) -> None:
        estimates, sources = outputs.float(), batch["sources"].float()
        scores = separation_scores(estimates, sources, batch["mixture"].float(), lengths=batch["lengths"])
        for key, values in scores.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        self.count += int(batch["mixture"].shape[0])
        if self.perceptual_rate is not None:
            mask = valid_mask(batch["lengths"], sources.shape[-1], device=sources.device)
            perms, _ = best_permutation(pairwise_si_sdr(estimates, sources, mask=mask))
            ordered = reorder(estimates, perms).cpu()
            for b, length in enumerate(batch["lengths"].tolist()):
                item = perceptual_scores(ordered[b, :, :length], sources[b, :, :length].cpu(), self.perceptual_rate)
                for key, value in item.items():
                    self.sums[key] = self.sums.get(key, 0.0) + value

    def compute(self) -> dict[str, float]:
        return {key: total / max(self.count, 1) for key, total in self.sums.items()}


# --- the task ------------------------------------------------------------------------------------


def espeak_speakers(data: SeparationData) -> dict[str, dict[str, list[Path]]]:
    """Build (or reuse) the synthetic corpus; {split: {speaker: files}}, split by voice variant."""
    folder = Path(data.cache_dir)
    manifest = build_corpus(folder, CorpusSpec(**data.corpus.model_dump(), sample_rate=data.sample_rate))
    groups: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for name, entry in manifest["speakers"].items():
        groups[entry["split"]][name] = [folder / f for f in entry["files"]]
    return groups


def split_speakers(
    speakers: dict[str, list[Path]], fractions: tuple[float, float], seed: int
) -> dict[str, dict[str, list[Path]]]:
    """Disjoint val/test/train speaker groups (no test speaker is ever trained on)."""
    names = sorted(speakers)
    random.Random(seed).shuffle(names)
    n_val = max(1, round(fractions[0] * len(names)))
    n_test = max(1, round(fractions[1] * len(names)))
    groups = {"val": names[:n_val], "test": names[n_val : n_val + n_test], "train": names[n_val + n_test :]}
    return {split: {n: speakers[n] for n in group} for split, group in groups.items()}


class SeparationTask(Task):
    monitor = "si_sdri"
    monitor_mode = "max"
    demo_output_name = "separated"

    def load_splits(self, recipe: SeparationRecipe, *, source: str | None = None) -> Splits:
        source = resolve_samples(source or recipe.data.source)
        if source == "espeak":
            return self._dynamic_mix_splits(recipe, source, espeak_speakers(recipe.data))
        if source.startswith("utterances:"):
            folder = Path(source.removeprefix("utterances:"))
            if not folder.is_dir():
                raise UserError(f"--data {source}: {folder} is not a folder of <speaker>/*.wav")
            groups = split_speakers(speaker_folders(folder), recipe.data.speaker_split, recipe.train.seed)
            return self._dynamic_mix_splits(recipe, source, groups)
        return self._folder_splits(recipe, source)

    def _dynamic_mix_splits(self, recipe: SeparationRecipe, source: str, groups: dict[str, dict]) -> Splits:
        """New training mixtures every epoch; fixed (seeded) validation and test mixtures."""
        data, seed = recipe.data, recipe.train.seed
        mix = dict(num_speakers=data.num_speakers, sample_rate=data.sample_rate, gain_db=data.gain_db)
        eval_segment = round(data.eval_segment_seconds * data.sample_rate)
        files = sorted(p for group in groups.values() for utterances in group.values() for p in utterances)
        return Splits(
            train=DynamicMixDataset(groups["train"], length=data.train_mixtures, seed=None,
                                    segment=round(data.segment_seconds * data.sample_rate), **mix),
            val=DynamicMixDataset(groups["val"], length=data.val_mixtures, segment=eval_segment, seed=seed + 1, **mix),
            test=DynamicMixDataset(groups["test"], length=data.test_mixtures, segment=eval_segment, seed=seed + 2,
                                   **mix),
            info={"sample_rate": data.sample_rate, "num_speakers": data.num_speakers, "source": source,
                  "speakers": {split: sorted(group) for split, group in groups.items()}},
            fingerprint=fingerprint(file_sizes(files), data.model_dump(mode="json"), seed),
        )

    def _folder_splits(self, recipe: SeparationRecipe, source: str) -> Splits:
        """Pre-mixed data: a LibriMix/WHAM! root (train/val/test) or a flat folder (test only)."""
        data = recipe.data
        rate, speakers = data.sample_rate, data.num_speakers
        info = {"sample_rate": rate, "num_speakers": speakers, "source": source}
        folder = Path(source)
        if not folder.is_dir():
            raise UserError(
                f"--data {source}: not a folder; give espeak, utterances:<dir>, a LibriMix/WHAM! root or a folder "
                "of itemN_mix.wav + itemN_sourceK.wav"
            )
        if is_librimix_root(folder):
            items = {split: librimix_items(folder, split, num_speakers=speakers) for split in ("train", "val", "test")}
        else:
            flat = flat_items(folder, num_speakers=speakers)
            if not flat:
                raise UserError(
                    f"--data {source}: neither a LibriMix/WHAM! root (<split>/mix_clean/) nor a flat folder "
                    "(itemN_mix.wav + itemN_source1.wav ...)"
                )
            nothing = MixtureFiles(flat.folders, tuple([] for _ in flat.names))
            items = {"train": nothing, "val": nothing, "test": flat}  # a flat folder is evaluation data only
        return Splits(
            train=MixtureFolderDataset(items["train"], sample_rate=rate, segment=round(data.segment_seconds * rate)),
            val=MixtureFolderDataset(items["val"], sample_rate=rate),
            test=MixtureFolderDataset(items["test"], sample_rate=rate),
            info=info,
            fingerprint=fingerprint((size for group in items.values() for size in group.sizes()), rate, speakers),
        )

    def epoch_log(self, splits: Splits) -> dict[str, float]:
        """How many pre-mixed items had an unreadable file so far (each reported in one line when met)."""
        datasets = [d for d in (splits.train, splits.val, splits.test) if isinstance(d, MixtureFolderDataset)]
        return {"skipped_items": sum(len(d.skipped) for d in datasets)} if datasets else {}

    def build_model(self, recipe: SeparationRecipe, info: dict[str, Any]) -> nn.Module:
        return build_separator(recipe.model, num_speakers=info["num_speakers"])

    def collate(self, items: list[Any]) -> dict[str, Tensor]:
        return collate(items)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        estimates = model(batch["mixture"])
        loss, _ = pit_si_snr_loss(estimates, batch["sources"], lengths=batch["lengths"])
        return loss, estimates.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return SeparationMetrics()

    def test_metrics(self, info: dict[str, Any]) -> Metrics:
        return SeparationMetrics(perceptual_rate=info["sample_rate"])

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: SeparationRecipe,
        info: dict[str, Any],
        input_path: Path,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
        num_speakers: int | None = None,
        chunk_seconds: float | None = None,
    ) -> list[Path]:
        """Separate a file or every audio file of a folder into <output>/<stem>_spk<k>.wav (32-bit float)."""
        rate, trained = info["sample_rate"], info["num_speakers"]
        if num_speakers is not None and num_speakers != trained:
            raise UserError(
                f"--num-speakers {num_speakers}: this checkpoint separates {trained} speakers; "
                f"use --num-speakers {trained} or a {num_speakers}-speaker checkpoint"
            )
        if output_path.suffix.lower() in AUDIO_SUFFIXES or output_path.is_file():
            raise UserError(f"--output {output_path}: give a folder; one file per speaker is written into it")
        inputs = audio_files(input_path) if input_path.is_dir() else [input_path]
        if not inputs:
            raise UserError(f"--input {input_path}: the folder holds no .wav, .flac or .ogg files")
        # Check every input before writing anything: bad input leaves no half-written output.
        readers = [StreamReader(path, rate) for path in inputs]
        for reader in readers:
            check_not_silent(reader)
        chunk_s = chunk_seconds or recipe.data.chunk_seconds
        chunk = round(chunk_s * rate)
        overlap = min(round(recipe.data.overlap_seconds * rate), chunk // 2)
        model.eval()
        output_path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".separating.", dir=output_path))
        try:
            staged: list[Path] = []
            for reader in readers:
                staged += self._separate_file(model, reader, staging, chunk=chunk, overlap=overlap,
                                              device=device, speakers=trained)
            written = []
            for path in staged:
                os.replace(path, output_path / path.name)
                written.append(output_path / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if plot:
            from panformer.speech.plots import separation_png

            for reader in readers:
                outputs = [output_path / f"{reader.path.stem}_spk{k + 1}.wav" for k in range(trained)]
                seconds = min(reader.num_frames, 30 * rate)  # a picture of the first 30 s
                written.append(separation_png(
                    reader.read(0, seconds).numpy(), [sf.read(str(p), frames=seconds)[0] for p in outputs], rate,
                    output_path / f"{reader.path.stem}_separation.png", title=reader.path.name,
                ))
        return written

    def _separate_file(
        self, model: nn.Module, reader: StreamReader, staging: Path, *, chunk: int, overlap: int,
        device: torch.device, speakers: int,
    ) -> list[Path]:
        paths = [staging / f"{reader.path.stem}_spk{k + 1}.wav" for k in range(speakers)]
        files = [sf.SoundFile(str(p), "w", samplerate=reader.sample_rate, channels=1, subtype="FLOAT") for p in paths]
        try:
            for piece in separate_stream(model, reader, chunk=chunk, overlap=overlap, device=device):
                for f, wave in zip(files, piece, strict=True):
                    f.write(wave.numpy())
        finally:
            for f in files:
                f.close()
        return paths

    @torch.no_grad()
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
        """Waveforms and spectrograms of the first test mixture and its estimates (best permutation)."""
        from panformer.speech.plots import separation_png

        item = collate([dataset[0]])
        model.eval()
        estimates = model(item["mixture"].to(device)).float().cpu()
        scores = separation_scores(estimates, item["sources"], item["mixture"], with_sdr=False)
        perm, _ = best_permutation(pairwise_si_sdr(estimates, item["sources"]))
        ordered = reorder(estimates, perm)[0]
        return separation_png(
            item["mixture"][0].numpy(), [e.numpy() for e in ordered], info["sample_rate"], path,
            title=f"first test mixture: SI-SDRi {float(scores['si_sdri'][0]):.2f} dB",
        )

    def demo_input(self, recipe: SeparationRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The first test mixture (speakers never heard in training), written as a wav."""
        test = self.load_splits(recipe).test
        item = test[0]
        path = Path(workdir) / "demo_mixture.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, item["mixture"], info["sample_rate"])
        return path


class SpeechDomain(Domain):
    name = "speech"
    recipe_type = SeparationRecipe
    cli_app = "panformer.speech.cli:app"

    def task(self, recipe: Recipe) -> Task:
        return SeparationTask()

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None or data == "espeak":
            where = "no --data" if data is None else "espeak"
            return RecipeChoice("small", f"{where}: 2 speakers on the synthetic eSpeak corpus, trains on a CPU")
        if data.startswith("utterances:"):
            if not Path(data.removeprefix("utterances:")).is_dir():
                raise self.unrecognised_data(data, "not a folder of <speaker>/*.wav")
            return RecipeChoice("small", "speakers' utterances mixed on the fly, 2 speakers")
        folder = Path(data)
        evaluation_only = ("is test data only (itemN_mix.wav + sources, no training split); train on other "
                           "data, then `evaluate --checkpoint RUN --data` it")
        if data == SAMPLES_SOURCE:
            raise self.unrecognised_data(data, f"the Libri2Mix samples folder {evaluation_only}")
        if not folder.is_dir():
            raise self.unrecognised_data(data, "not a folder, espeak or utterances:<dir>")
        if is_librimix_root(folder):
            return RecipeChoice("libri2mix", "a LibriMix/WHAM! folder: <split>/mix_clean, s1, s2")
        if any(p.suffix.lower() in AUDIO_SUFFIXES and FLAT_MIX.match(p.stem) for p in folder.iterdir()):
            raise self.unrecognised_data(data, f"a flat folder of mixtures {evaluation_only}")
        if any(p.suffix.lower() in AUDIO_SUFFIXES for p in folder.glob("*/*")):
            raise self.unrecognised_data(data, f"looks like <speaker>/*.wav folders; give --data utterances:{data}")
        raise self.unrecognised_data(data, "neither a LibriMix/WHAM! root (<split>/mix_clean/) nor speaker folders")

