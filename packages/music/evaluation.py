"""What `evaluate` adds to the NLL: generated songs' musical metrics beside the test pieces', and speed.

- `gen_*` / `test_*`: pitch-class entropy, scale consistency and groove consistency of unconditional
  samples and of the test pieces;
- `notes_per_s_cache` / `notes_per_s_nocache`: sampling speed of the same model and seed with and
  without the KV cache (`cache_speedup`; `cache_identical` is 1.0 when both produced the same events);
- `seconds_per_1024_tokens`: seconds of music a 1024-event sequence holds, over the test pieces.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from panformer.engine.runlog import progress_bar
from panformer.music.data import header_codes
from panformer.music.generate import generate
from panformer.music.metrics import musical_metrics
from panformer.music.midi import Piece
from panformer.music.representation import decode_notes, encode_notes, instrument_code


def seconds_per_1024_tokens(pieces: list[Piece], tokens: list[int]) -> float:
    return 1024.0 * sum(p.seconds for p in pieces) / max(sum(tokens), 1)


def music_evaluation(model: nn.Module, recipe: Any, info: dict[str, Any], test_pieces: list[Piece], *,
                     device: torch.device, seed: int = 0) -> dict[str, float]:
    """Musical metrics and sampling speed for an MMT checkpoint (see the module docstring)."""
    cfg = recipe.generate
    sampling = cfg.per_field()
    events = min(cfg.eval_events, info["max_len"])
    out: dict[str, float] = {}
    test = musical_metrics([p.notes for p in test_pieces], beats_per_bar=[p.beats_per_bar for p in test_pieces])
    out |= {f"test_{k}": v for k, v in test.items()}
    out["seconds_per_1024_tokens"] = seconds_per_1024_tokens(
        test_pieces, [len(encode_notes(p.notes, max_beat=10**9)) for p in test_pieces])
    prompt = header_codes([])[:1]
    trained_on = {instrument_code(n) for n in info["instruments"]}
    samples, seconds, notes = [], 0.0, 0
    with progress_bar(enabled=True) as bar:
        task = bar.add_task("music: sampling", total=cfg.eval_samples + 1, status="")
        for i in range(cfg.eval_samples):
            result = generate(model, prompt, max_events=events, sampling=sampling, seed=seed + i,
                              max_beat_jump=cfg.max_beat_jump, allowed_instruments=trained_on, device=device)
            samples.append(decode_notes(result.codes))
            seconds += result.seconds
            notes += len(samples[-1])
            bar.update(task, advance=1)
        if samples:
            generated = musical_metrics(samples)
            out |= {f"gen_{k}": v for k, v in generated.items()}
            out["notes_per_s_cache"] = notes / max(seconds, 1e-9)
        # The same model and seed without the cache: same events, every step recomputes the prefix.
        # Exactly `events` events each (no end-of-song; one beat at most between notes keeps the
        # beats inside the vocabulary), so both time the same work.
        timing = dict(max_events=events, sampling=sampling, seed=seed, max_beat_jump=1, may_end=False,
                      end_beat=info["max_beat"] + 1, allowed_instruments=trained_on, device=device)
        cached = generate(model, prompt, **timing)
        uncached = generate(model, prompt, use_cache=False, **timing)
        bar.update(task, advance=1)
    n_notes = len(decode_notes(uncached.codes))
    out["notes_per_s_nocache"] = n_notes / max(uncached.seconds, 1e-9)
    out["cache_speedup"] = uncached.seconds / max(cached.seconds, 1e-9)
    out["cache_identical"] = float(cached.codes.shape == uncached.codes.shape
                                   and bool((cached.codes == uncached.codes).all()))
    return out
