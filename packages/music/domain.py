"""The music domain: recipes, the next-event language-modelling task (MMT or REMI tokens) and predict.

Training minimises the per-field cross-entropy of the next event (MMT: the sum over the fields that
apply to the next event's type; REMI: one field). Models are selected on the validation pieces' NLL
per event; `predict` generates MIDI (unconditional, instrument-informed or continuing a prompt).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, RecipeChoice, Splits, Task
from panformer.engine.errors import UserError
from panformer.music.data import (
    MUSIC21_PREFIX,
    PieceList,
    StoreWindows,
    WindowDataset,
    collate,
    fingerprint,
    header_codes,
    load_pieces,
    mmt_windows,
    split_pieces,
)
from panformer.music.generate import (
    BarWindow,
    FieldSampling,
    bar_window,
    continue_bars,
    fit_bars,
    generate,
    note_bars,
)
from panformer.music.metrics import FieldNLL
from panformer.music.midi import DEFAULT_QPM, MIDI_SUFFIXES, Piece, read_midi, write_midi
from panformer.music.model import CompoundTransformer
from panformer.music.representation import (
    BEAT,
    FIELDS,
    INSTRUMENT,
    INSTRUMENT_EVENT,
    INSTRUMENTS,
    NOTE,
    TYPE,
    Vocabulary,
    decode_notes,
    encode_notes,
    instrument_code,
)
from shared_attention import MoBA, Routing, Variant

# --- recipe --------------------------------------------------------------------------------------


class MusicData(StrictModel):
    source: str = Field("music21:bach", description="music21:<composer>[,<composer>] or a folder of .mid files")
    cache_dir: str = Field("runs/data/music", description="where parsed, pre-tokenised pieces are cached (memory-mapped)")
    max_pieces: int | None = Field(None, ge=3, description="a seeded sample of this many pieces")
    skip_bad_files: bool = Field(True, description="skip unreadable or empty MIDI files, counted in one line "
                                 "(false: stop at the first)")
    representation: Literal["mmt", "remi"] = "mmt"
    max_len: int = Field(1024, ge=8, description="events per training window (and the model's context)")
    max_beat: int = Field(256, ge=4, description="beats a window may span (MMT beat vocabulary)")
    train_stride: float = Field(0.5, gt=0, le=1, description="step between training windows, as a fraction")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = Field(0, description="shuffles pieces into splits; fixed across training seeds")


class DenseAttentionConfig(StrictModel):
    """Every event attends every earlier event."""

    name: Literal["dense"] = "dense"


class MoBAConfig(StrictModel):
    """MoBA (Lu et al. 2025): each event attends its `top_k` best blocks of `block_size` earlier events (its own
    block included), chosen by a parameter-free gate."""

    name: Literal["moba"] = "moba"
    block_size: int = Field(64, ge=1, description="events per key block")
    top_k: int = Field(3, ge=1, description="blocks each event attends, its own included")


class RoutingConfig(StrictModel):
    """Routing attention (Roy et al. 2021): each event attends the earlier events of its k-means cluster."""

    name: Literal["routing"] = "routing"
    num_clusters: int = Field(4, ge=1, description="k-means clusters per head")


AttentionConfig = Annotated[DenseAttentionConfig | MoBAConfig | RoutingConfig, Field(discriminator="name")]


def attention_variant(cfg: AttentionConfig) -> Variant | None:
    """The core's causal variant that `cfg` names; None is dense softmax."""
    if isinstance(cfg, MoBAConfig):
        return MoBA(block_size=cfg.block_size, top_k=cfg.top_k, causal=True)
    if isinstance(cfg, RoutingConfig):
        return Routing(num_clusters=cfg.num_clusters, causal=True)
    return None


class MusicModel(StrictModel):
    dim: int = Field(512, ge=8)
    depth: int = Field(6, ge=1)
    num_heads: int = Field(8, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    position: Literal["rope", "learned"] = "rope"
    attention: AttentionConfig = Field(default_factory=DenseAttentionConfig,
                                       description="causal self-attention: dense, moba or routing")


class Sampling(StrictModel):
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(0.9, gt=0, le=1)


class GenerateConfig(StrictModel):
    """How `predict` and `evaluate` sample: a default for every field, and per-field overrides."""

    default: Sampling = Sampling()
    fields: dict[str, Sampling] = Field(default_factory=dict, description="per field: type, beat, position, ...")
    max_events: int = Field(1024, ge=4, description="events in a generated song, prompt included (without --bars)")
    max_beat_jump: int = Field(8, ge=1, description="beats a note may start after the previous note")
    eval_samples: int = Field(4, ge=0, description="songs `evaluate` generates for the musical metrics")
    eval_events: int = Field(256, ge=8, description="events per song `evaluate` generates (and times)")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, Sampling]) -> dict[str, Sampling]:
        unknown = set(value) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; use {', '.join(FIELDS)}")
        return value

    def per_field(self, *, temperature: float | None = None, top_p: float | None = None) -> dict[str, FieldSampling]:
        out = {}
        for name in FIELDS:
            cfg = self.fields.get(name, self.default)
            out[name] = FieldSampling(
                temperature=cfg.temperature if temperature is None else temperature,
                top_k=cfg.top_k, top_p=cfg.top_p if top_p is None else top_p,
            )
        return out


class MusicRecipe(Recipe):
    domain: Literal["music"] = "music"
    data: MusicData = MusicData()
    model: MusicModel = MusicModel()
    generate: GenerateConfig = GenerateConfig()


# --- helpers -------------------------------------------------------------------------------------


def parse_instruments(text: str) -> list[str]:
    """'piano,violin,cello' -> instrument classes; an unknown name is a UserError listing the known ones."""
    names = [name.strip().lower().replace(" ", "-") for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("--instruments: give comma-separated instrument names, e.g. piano,violin,cello")
    for name in names:
        if name not in INSTRUMENTS:
            raise UserError(f"--instruments: unknown instrument '{name}'; known: {', '.join(INSTRUMENTS)}")
    return names


def fit_prompt(codes: np.ndarray, *, path: Path, beats_per_bar: float, context: int, max_beat: int,
               bars: int | None, prompt_bars: int | None) -> tuple[BarWindow, str | None]:
    """The part of a prompt (header and notes, no end-of-song) the model reads, and the one line that says
    which part when it is not the whole prompt.

    The whole prompt when it fits the context and the beat vocabulary with room for the continuation
    (`bars` of the prompt's busiest bar, at most half the context; half of both without `bars`), else its
    latest whole bars that fit, or its last `prompt_bars` bars (a UserError when those do not fit).
    """
    if bars is None:
        room_events, room_beats, room = context // 2, max_beat // 2, "room to continue it"
    else:
        busiest = int(np.bincount(note_bars(codes, beats_per_bar=beats_per_bar)).max())
        room_events = min(bars * busiest, context // 2)
        room_beats = min(math.ceil((bars + 1) * beats_per_bar), max_beat // 2)  # + the prompt's last bar
        room = f"room for {bars} bar{'s' * (bars != 1)}"
    limits = dict(max_events=context - room_events, max_beat=max_beat - room_beats)
    whole = bar_window(codes, first_bar=0, beats_per_bar=beats_per_bar)
    best = fit_bars(codes, beats_per_bar=beats_per_bar, **limits)
    if prompt_bars is not None:
        if prompt_bars < 1:
            raise UserError("--prompt-bars: give a positive number of bars")
        if prompt_bars > whole.bars:
            raise UserError(f"--prompt-bars {prompt_bars}: {path} has {whole.bars} bars; give at most {whole.bars}")
        window = bar_window(codes, first_bar=whole.bars - prompt_bars, beats_per_bar=beats_per_bar)
        if not window.fits(**limits):
            fix = f"give --prompt-bars {best.bars} or fewer" if best else "give fewer --bars"
            raise UserError(f"--prompt-bars {prompt_bars}: the last {prompt_bars} bars of {path} ({len(window.codes)} "
                            f"events, {window.last_beat + 1} beats) do not fit the context of {context} events and "
                            f"{max_beat} beats with {room}; {fix}")
        return window, f"prompt: using its last {window.bars} bars ({len(window.codes)} events)"
    if whole.fits(**limits):
        return whole, None
    too_long = (f"{len(codes)} events do not fit the context of {context}" if len(codes) > limits["max_events"]
                else f"its {whole.last_beat + 1} beats do not fit the model's {max_beat}")
    if best is None:
        raise UserError(f"--prompt {path}: {too_long} with {room}, not even its last bar; give fewer --bars "
                        "or use a model with a longer context")
    return best, f"prompt: {too_long} with {room}; using its last {best.bars} bars ({len(best.codes)} events)"


def build_model(recipe: MusicRecipe, info: dict[str, Any]) -> CompoundTransformer:
    m = recipe.model
    model = CompoundTransformer(vocab_sizes=info["vocab_sizes"], dim=m.dim, depth=m.depth, num_heads=m.num_heads,
                                mlp_ratio=m.mlp_ratio, dropout=m.dropout, max_len=info["max_len"], position=m.position,
                                variant=attention_variant(m.attention))
    if "note_token_ids" in info:  # REMI: which tokens are notes, to report the NLL per note
        model.register_buffer("note_token_ids", torch.as_tensor(info["note_token_ids"]), persistent=False)
    return model


def unigram_logprobs(train: Dataset, vocab_sizes: list[int], *, chunk: int = 512) -> list[list[float]]:
    """Log-frequencies of each field's codes over the training windows (add-one smoothed): the
    trivial baseline `nll_unigram` that the model's NLL is compared with. Counted `chunk` windows at a
    time, so memory stays bounded and the per-call overhead is paid once per chunk."""
    counts = [torch.ones(size, dtype=torch.float64) for size in vocab_sizes]
    for first in range(0, len(train), chunk):
        # What the model predicts: every event but the first of each window.
        codes = torch.cat([train[i]["codes"][1:] for i in range(first, min(first + chunk, len(train)))])
        for f, size in enumerate(vocab_sizes):
            rows = codes
            if len(vocab_sizes) == len(FIELDS) and f != TYPE:  # MMT: only the events the field applies to
                kinds = (NOTE, INSTRUMENT_EVENT) if f == INSTRUMENT else (NOTE,)
                rows = codes[torch.isin(codes[:, TYPE], torch.tensor(kinds))]
            counts[f] += torch.bincount(rows[:, f], minlength=size).double()
    return [(c / c.sum()).log().tolist() for c in counts]


# --- the task ------------------------------------------------------------------------------------


class MusicTask(Task):
    monitor = "nll"
    monitor_mode = "min"
    demo_output_name = "continuation.mid"

    def __init__(self, recipe: MusicRecipe | None = None) -> None:
        self.recipe = recipe  # the generation settings `evaluation_plot` samples with

    def load_splits(self, recipe: MusicRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        store = load_pieces(source, cache_dir=Path(data.cache_dir), max_pieces=data.max_pieces,
                            skip_bad_files=data.skip_bad_files)
        groups = split_pieces(store.names, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                              seed=data.split_seed)
        if not groups["train"]:
            raise UserError(f"--data {source}: too few pieces for a training split; give more pieces")
        datasets: dict[str, Dataset] = {}
        for name, group in groups.items():
            stride = data.train_stride if name == "train" else 1.0
            if data.representation == "mmt":  # cut from the pre-tokenised store as read
                datasets[name] = StoreWindows(store, group, max_len=data.max_len, max_beat=data.max_beat,
                                              stride=stride)
            else:
                pieces = PieceList(store, group)
                windows = [w for piece in pieces for w in self.windows(piece, recipe, stride=stride)]
                datasets[name] = WindowDataset(windows, pieces)
        info: dict[str, Any] = {
            "representation": data.representation, "source": source, "max_len": data.max_len,
            "max_beat": data.max_beat, "pieces": {name: [store.names[i] for i in g] for name, g in groups.items()},
            "skipped_files": len(store.skipped),
        }
        if data.representation == "mmt":
            info |= {"fields": list(FIELDS), "vocab_sizes": list(Vocabulary(data.max_beat).sizes),
                     "instruments": store.instruments(groups["train"])}
        else:
            from panformer.music.remi import note_token_ids, remi_tokenizer

            info |= {"fields": ["token"], "vocab_sizes": [len(remi_tokenizer())], "note_token_ids": note_token_ids()}
        info["unigram_logprobs"] = unigram_logprobs(datasets["train"], info["vocab_sizes"])
        extra = f"{data.representation}\x00{data.split_seed}\x00{data.max_len}\x00{data.max_beat}\x00{data.train_stride}"
        return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"], info=info,
                      fingerprint=fingerprint(store, groups, extra))

    @staticmethod
    def windows(piece: Piece, recipe: MusicRecipe, *, stride: float) -> list[np.ndarray]:
        if recipe.data.representation == "remi":
            from panformer.music.remi import remi_windows

            return remi_windows(piece, max_len=recipe.data.max_len, stride=stride)
        return mmt_windows(piece, max_len=recipe.data.max_len, max_beat=recipe.data.max_beat, stride=stride)

    def build_model(self, recipe: MusicRecipe, info: dict[str, Any]) -> nn.Module:
        return build_model(recipe, info)

    def collate(self, items: list[Any]) -> dict[str, Tensor]:
        return collate(items)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        codes, valid = batch["codes"], batch["valid"]
        inputs, targets, scored = codes[:, :-1], codes[:, 1:], valid[:, 1:]
        logits = model(inputs)
        if len(logits) == 1:  # single-field tokens (REMI)
            applies = scored[None]
            note_ids = getattr(model, "note_token_ids", None)
            notes = torch.isin(targets[..., 0], note_ids.to(targets.device)) & scored if note_ids is not None else scored
        else:
            kind = targets[..., TYPE]
            is_note = (kind == NOTE) & scored
            applies = torch.stack([
                scored if f == TYPE else (is_note | ((kind == INSTRUMENT_EVENT) & scored) if f == INSTRUMENT else is_note)
                for f in range(len(FIELDS))
            ])
            notes = is_note
        sums, counts = [], []
        for f, field_logits in enumerate(logits):
            ce = nn.functional.cross_entropy(field_logits.float().flatten(0, 1), targets[..., f].flatten(),
                                             reduction="none").view_as(scored)
            sums.append((ce * applies[f]).sum())
            counts.append(applies[f].sum())
        events = scored.sum()
        loss = torch.stack(sums).sum() / events.clamp(min=1)
        outputs = {"field_sums": torch.stack(sums).detach(), "field_counts": torch.stack(counts),
                   "events": events, "notes": notes.sum(), "applies": applies, "targets": targets}
        return loss, outputs

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return FieldNLL(info["fields"], unigram_logprobs=info.get("unigram_logprobs"))

    def evaluation_extras(self, model: nn.Module, *, recipe: MusicRecipe, info: dict[str, Any], splits: Splits,
                          device: torch.device) -> dict[str, float]:
        """MMT checkpoints: musical metrics of generated pieces next to the test pieces', and sampling speed
        with and without the KV cache (`panformer.music.evaluation`)."""
        if info["representation"] != "mmt":
            return {}
        from panformer.music.evaluation import music_evaluation

        return music_evaluation(model, recipe, info, splits.test.pieces, device=device)

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path | None:
        """A piano roll of one piece generated unconditionally (its MIDI beside it)."""
        if self.recipe is None:
            return None
        written = self.predict(model, recipe=self.recipe, info=info, input_path=None,
                               output_path=path.with_suffix(".mid"), device=device, plot=True)
        png = written[-1]
        if png != path:
            png.replace(path)
        return path

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        *,
        recipe: MusicRecipe,
        info: dict[str, Any],
        input_path: Path | None,
        output_path: Path,
        device: torch.device,
        plot: bool = False,
        instruments: str | None = None,
        bars: int | None = None,
        prompt_bars: int | None = None,
        audio: bool = False,
        seed: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> list[Path]:
        """Generate a MIDI file: unconditional, with `instruments`, or continuing the MIDI `input_path`.

        `bars`: how many bars to generate (after the prompt), past the context if need be; default until
        end-of-song or the context. `prompt_bars`: how many of the prompt's last bars to read (default: all,
        or the most that fit the context with room for the continuation; `fit_prompt`).
        """
        if output_path.suffix.lower() not in (".mid", ".midi"):
            raise UserError(f"--output {output_path}: write the generated music to a .mid file")
        if info["representation"] == "remi":
            if input_path is not None or instruments is not None or bars is not None or prompt_bars is not None:
                raise UserError("REMI baseline checkpoints generate unconditionally only; drop --prompt, "
                                "--prompt-bars, --instruments and --bars (or use an MMT checkpoint)")
            return self._predict_remi(model, recipe=recipe, info=info, output_path=output_path, device=device,
                                      plot=plot, seed=seed, temperature=temperature, top_p=top_p)
        if input_path is not None and instruments is not None:
            raise UserError("give either --prompt (continue a MIDI file) or --instruments, not both")
        if prompt_bars is not None and input_path is None:
            raise UserError("--prompt-bars: give --prompt FILE.mid too (it picks how many of its last bars to use)")
        if bars is not None and bars < 1:
            raise UserError("--bars: give a positive number of bars")
        max_events = min(recipe.generate.max_events, info["max_len"])
        qpm, beats_per_bar, prompt_beats = DEFAULT_QPM, 4.0, None
        allowed, shift = None, 0
        if input_path is not None:
            piece = read_midi(input_path)
            whole_prompt = encode_notes(piece.notes, max_beat=10**9)[:-1]  # without end-of-song
            # With --bars the window slides over the model's context; without, the song ends at max_events.
            context = info["max_len"] if bars is not None else max_events
            window, note = fit_prompt(whole_prompt, path=input_path, beats_per_bar=piece.beats_per_bar,
                                      context=context, max_beat=info["max_beat"], bars=bars,
                                      prompt_bars=prompt_bars)
            if note is not None:
                print(note, file=sys.stderr)
            prompt, shift = window.codes, window.shift
            qpm, beats_per_bar, prompt_beats = piece.qpm, piece.beats_per_bar, piece.beats
            start_beat = max(n.beat for n in piece.notes)
        elif instruments is not None:
            names = parse_instruments(instruments)
            prompt = whole_prompt = header_codes(names)
            allowed = {instrument_code(n) for n in names}
            start_beat = 0
        else:
            prompt = whole_prompt = header_codes([])[:1]  # start-of-song only: the model picks among those it trained on
            allowed = {instrument_code(n) for n in info["instruments"]}
            start_beat = 0
        sampling = recipe.generate.per_field(temperature=temperature, top_p=top_p)
        if bars is None:  # until end-of-song, the context, or beats beyond the vocabulary
            result = generate(model, prompt, max_events=max_events, sampling=sampling, seed=seed,
                              end_beat=info["max_beat"] + 1, allowed_instruments=allowed,
                              max_beat_jump=recipe.generate.max_beat_jump, device=device)
        else:
            bar_start = int(np.ceil(prompt_beats / beats_per_bar) * beats_per_bar) if prompt_beats else start_beat
            result = continue_bars(model, prompt, end_beat=int(bar_start + bars * beats_per_bar) - shift,
                                   beats_per_bar=beats_per_bar, sampling=sampling, origin=shift, seed=seed,
                                   allowed_instruments=allowed, max_beat_jump=recipe.generate.max_beat_jump,
                                   device=device)
        continuation = result.new_codes.copy()
        continuation[continuation[:, TYPE] == NOTE, BEAT] += shift  # back to the piece's beats
        notes = decode_notes(np.concatenate([whole_prompt, continuation]))
        if not notes:
            raise UserError("the model generated no notes; try another --seed or a higher --temperature")
        written = [write_midi(notes, output_path, qpm=qpm, beats_per_bar=beats_per_bar)]
        new_notes = len(decode_notes(result.new_codes))
        print(f"generated {new_notes} notes ({len(result.new_codes)} events) in {result.seconds:.2f}s "
              f"({new_notes / max(result.seconds, 1e-9):.1f} notes/s)", file=sys.stderr)
        if plot:
            from panformer.music.plots import piano_roll_png

            title = f"{output_path.name}: {len(notes)} notes" + (f" (prompt {input_path.name})" if input_path else "")
            written.append(piano_roll_png(notes, output_path.with_suffix(".png"), title=title,
                                          prompt_beats=prompt_beats, beats_per_bar=beats_per_bar))
        if audio:
            from panformer.music.audio import render_wav

            wav = render_wav(output_path, output_path.with_suffix(".wav"))
            if wav is not None:
                written.append(wav)
        return written

    def _predict_remi(self, model: nn.Module, *, recipe: MusicRecipe, info: dict[str, Any], output_path: Path,
                      device: torch.device, plot: bool, seed: int, temperature: float | None,
                      top_p: float | None) -> list[Path]:
        from panformer.music.remi import decode_remi, generate_remi

        how = recipe.generate.per_field(temperature=temperature, top_p=top_p)["type"]  # the one field
        result = generate_remi(model, max_tokens=min(recipe.generate.max_events, info["max_len"]), sampling=how,
                               seed=seed, device=device)
        notes = decode_remi(result.codes)
        if not notes:
            raise UserError("the model generated no notes; try another --seed or a higher --temperature")
        written = [write_midi(notes, output_path)]
        print(f"generated {len(notes)} notes ({len(result.codes)} tokens) in {result.seconds:.2f}s", file=sys.stderr)
        if plot:
            from panformer.music.plots import piano_roll_png

            written.append(piano_roll_png(notes, output_path.with_suffix(".png"), title=f"{output_path.name} (REMI)"))
        return written

    def demo_input(self, recipe: MusicRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The first two bars of the first test piece (a piece never trained on), as a MIDI prompt."""
        splits = self.load_splits(recipe, source=info.get("source"))
        piece = splits.test.pieces[0]
        keep = [n for n in piece.notes if n.beat < 2 * piece.beats_per_bar]
        return write_midi(keep, workdir / "prompt.mid", qpm=piece.qpm, beats_per_bar=piece.beats_per_bar)


class MusicDomain(Domain):
    name = "music"
    recipe_type = MusicRecipe
    cli_app = "panformer.music.cli:app"

    def task(self, recipe: Recipe) -> Task:
        assert isinstance(recipe, MusicRecipe)
        return MusicTask(recipe)

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None or data.startswith(MUSIC21_PREFIX):
            where = "no --data: the Bach chorales" if data is None else f"the music21 corpus ({data})"
            return RecipeChoice("mmt", f"{where}, the Multitrack Music Transformer at paper size")
        path = Path(data)
        if path.is_file() and path.suffix.lower() in MIDI_SUFFIXES:
            raise self.unrecognised_data(data, "one MIDI file; give the folder holding the .mid files")
        if path.is_dir() and any(p.suffix.lower() in MIDI_SUFFIXES for p in path.rglob("*")):
            return RecipeChoice("mmt", "a folder of MIDI files, the Multitrack Music Transformer at paper size")
        problem = "no such folder" if not path.exists() else "no .mid/.midi files in it"
        raise self.unrecognised_data(data, f"{problem}; give a folder of MIDI files or music21:<composer>")


__all__ = ["MusicDomain", "MusicRecipe", "MusicTask", "parse_instruments"]
