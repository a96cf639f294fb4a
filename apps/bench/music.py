"""Music benchmark: MMT's compound events next to REMI+ tokens (miditok), side by side on one split.

Both representations train the same decoder-only transformer on `shared_attention` (same width, depth,
heads and context) through the engine, on the same pieces of the music21 Bach corpus, split by piece
with the same seed; checkpoints are selected on validation NLL and scored once on the test pieces.
Compared: tokens per test piece, seconds of music per 1024 tokens, test NLL per note (nats; comparable
across representations, unlike NLL per token), and sampling speed (notes/s, KV cache on). A last row
times MMT sampling with and without the KV cache at the paper's model size (random weights, same seed).

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/music.py --out apps/bench/results/music-cpu.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path

from panformer.engine.config import load_recipe
from panformer.engine.files import write_text_atomic
from panformer.engine.trainer import Trainer
from panformer.music.data import header_codes
from panformer.music.domain import MusicDomain, MusicRecipe, build_model
from panformer.music.evaluation import seconds_per_1024_tokens
from panformer.music.generate import FieldSampling, generate
from panformer.music.model import CompoundTransformer
from panformer.music.remi import decode_remi, generate_remi, remi_ids
from panformer.music.representation import (
    FIELDS,
    Vocabulary,
    decode_notes,
    encode_notes,
    instrument_code,
)


def bench_recipe(representation: str, args: argparse.Namespace, *, epochs: int = 1) -> MusicRecipe:
    return load_recipe(MusicRecipe, "music", "demo", overrides=[
        f"data.representation={representation}", f"data.max_pieces={args.pieces}", f"data.max_len={args.context}",
        f"model.dim={args.dim}", f"model.depth={args.depth}", f"model.num_heads={args.heads}",
        f"train.epochs={epochs}", "train.device=cpu", "train.seed=0",
    ])


def sampling_speed(representation: str, model: CompoundTransformer, info: dict, tokens: int,
                   seeds: int) -> float:
    """Notes per second of unconditional sampling with the KV cache, over `seeds` songs."""
    notes, seconds = 0, 0.0
    for seed in range(seeds):
        if representation == "mmt":
            allowed = {instrument_code(n) for n in info["instruments"]}
            result = generate(model, header_codes([])[:1], max_events=tokens, seed=seed, allowed_instruments=allowed,
                              sampling={f: FieldSampling(top_p=0.9) for f in FIELDS})
            notes += len(decode_notes(result.codes))
        else:
            result = generate_remi(model, max_tokens=tokens, sampling=FieldSampling(top_p=0.9), seed=seed)
            notes += len(decode_remi(result.codes))
        seconds += result.seconds
    return notes / seconds


def run_representation(representation: str, args: argparse.Namespace, workdir: Path) -> dict:
    domain = MusicDomain()
    # The same number of optimizer steps for both: REMI has ~4x more windows of the same length.
    probe = bench_recipe(representation, args)
    batches = math.ceil(len(domain.task(probe).load_splits(probe).train) / probe.train.batch_size)
    recipe = bench_recipe(representation, args, epochs=max(1, round(args.steps / batches)))
    fit = Trainer(domain, recipe, run_dir=workdir / representation).fit()
    task = domain.task(recipe)
    splits = task.load_splits(recipe)
    model = build_model(recipe, splits.info)
    from panformer.engine.checkpoint import load_checkpoint

    model.load_state_dict(load_checkpoint(fit.best_checkpoint).weights)
    model.eval()
    pieces = splits.test.pieces
    if representation == "mmt":
        lengths = [len(encode_notes(p.notes, max_beat=10**9)) for p in pieces]
    else:
        lengths = [len(remi_ids(p)) for p in pieces]
    return {
        "tokens_per_piece": statistics.fmean(lengths),
        "seconds_per_1024": seconds_per_1024_tokens(pieces, lengths),
        "nll_per_note": fit.test_metrics["nll_per_note"],
        "nll_per_token": fit.test_metrics["nll"],
        "notes_per_s": sampling_speed(representation, model, splits.info, args.sample_tokens, args.sample_seeds),
        "train_seconds": fit.seconds,
        "test_pieces": len(pieces),
        "train_windows": len(splits.train),
        "epochs": recipe.train.epochs,
    }


def cache_speedup(events: int) -> tuple[float, float, bool]:
    """Paper-size MMT (dim 512, 6 layers, 8 heads, 1024 context), random weights: seconds with and
    without the KV cache for the same `events`-event sample, and whether both samples are identical."""
    torch.manual_seed(0)
    model = CompoundTransformer(vocab_sizes=Vocabulary(256).sizes, dim=512, depth=6, num_heads=8, dropout=0.0,
                                max_len=1024).eval()
    sampling = {f: FieldSampling(top_p=0.9) for f in FIELDS}
    prompt = header_codes(["piano", "violin", "cello"])
    allowed = {instrument_code(n) for n in ("piano", "violin", "cello")}
    # Exactly `events` events each: no end-of-song, at most one beat between notes.
    timing = dict(max_events=events, sampling=sampling, seed=0, allowed_instruments=allowed, max_beat_jump=1,
                  may_end=False, end_beat=257)
    cached = generate(model, prompt, **timing)
    plain = generate(model, prompt, use_cache=False, **timing)
    assert len(cached.codes) == events
    return cached.seconds, plain.seconds, bool(np.array_equal(cached.codes, plain.codes))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=60, help="Bach pieces (music21 corpus), split 80/10/10")
    parser.add_argument("--context", type=int, default=256, help="tokens per window / model context")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per representation")
    parser.add_argument("--sample-tokens", type=int, default=256)
    parser.add_argument("--sample-seeds", type=int, default=3)
    parser.add_argument("--cache-events", type=int, default=384, help="events for the paper-size cache timing")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/music-cpu.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    with TemporaryDirectory() as tmp:
        results = {rep: run_representation(rep, args, Path(tmp)) for rep in ("mmt", "remi")}
    with_cache, without_cache, identical = cache_speedup(args.cache_events)
    mmt, remi = results["mmt"], results["remi"]
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    lines = [
        "# Music: MMT compound events vs REMI+ tokens, same transformer, same split",
        "",
        f"Command: `OMP_NUM_THREADS={threads} .venv/bin/python apps/bench/music.py` "
        f"(--pieces {args.pieces} --context {args.context} --dim {args.dim} --depth {args.depth} "
        f"--heads {args.heads} --steps {args.steps})  ",
        f"Hardware: {cpu_name()} ({platform.machine()}, {os.cpu_count()} cores), "
        f"{threads} math thread(s), shared with other jobs during this run; torch {torch.__version__}.  ",
        f"Data: {args.pieces} pieces of the music21 Bach corpus, split by piece (seed 0): "
        f"{mmt['test_pieces']} test pieces; selection on validation NLL, test scored once.  ",
        f"Total wall time: {time.perf_counter() - started:.0f} s.",
        "",
        "| representation | tokens per test piece | seconds of music per 1024 tokens | test NLL per note (nats) "
        "| test NLL per token | sampling notes/s (KV cache) | train windows | epochs (~same steps) | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("MMT (6-field compound events)", mmt), ("REMI+ (miditok, one field)", remi)):
        lines.append(f"| {name} | {row['tokens_per_piece']:.0f} | {row['seconds_per_1024']:.1f} | "
                     f"{row['nll_per_note']:.3f} | {row['nll_per_token']:.3f} | {row['notes_per_s']:.1f} | "
                     f"{row['train_windows']} | {row['epochs']} | {row['train_seconds']:.0f} |")
    lines += [
        "",
        f"MMT holds {mmt['seconds_per_1024'] / remi['seconds_per_1024']:.2f}x more music per 1024 tokens and samples "
        f"{mmt['notes_per_s'] / max(remi['notes_per_s'], 1e-9):.2f}x more notes per second than REMI+ here "
        "(the paper: 2.6-3.5x and 2.1-3.3x on its datasets).",
        "",
        "## KV cache, paper-size MMT (dim 512, 6 layers, 8 heads), random weights",
        "",
        f"{args.cache_events} events from the same prompt and seed: {with_cache:.2f} s with the cache, "
        f"{without_cache:.2f} s without ({without_cache / with_cache:.1f}x); identical samples: {identical}.",
        "",
    ]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
