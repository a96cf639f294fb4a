"""The REMI-style baseline: miditok's REMI tokens (one field per token) for the same transformer.

REMI+ with programs in one stream (Bar, Position, Program, Pitch, Velocity, Duration tokens) on the same
12-steps-per-beat grid for the first 4 beats of a note's duration, so that both representations see
the same music. Used by the `remi-baseline` recipe and `apps/bench/music.py`.

Legend: L tokens.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import numpy as np
import torch

from panformer.engine.errors import UserError
from panformer.music.generate import FieldSampling, Generated, sample_code
from panformer.music.midi import Piece, to_score
from panformer.music.model import CompoundTransformer
from panformer.music.representation import RESOLUTION, Note, instrument_of_program


@cache
def remi_tokenizer() -> Any:
    from miditok import REMI, TokenizerConfig

    config = TokenizerConfig(
        use_programs=True, one_token_stream_for_programs=True, beat_res={(0, 4): RESOLUTION, (4, 12): 4},
        num_velocities=1, special_tokens=["PAD", "BOS", "EOS"], use_time_signatures=False, use_tempos=False,
    )
    return REMI(config)


def remi_ids(piece: Piece) -> np.ndarray:
    """BOS, the piece's REMI tokens, EOS: (L,) ids."""
    tokenizer = remi_tokenizer()
    sequence = tokenizer.encode(to_score(piece.notes, qpm=piece.qpm, beats_per_bar=4.0))
    if isinstance(sequence, list):
        sequence = sequence[0]
    return np.asarray([tokenizer.vocab["BOS_None"], *sequence.ids, tokenizer.vocab["EOS_None"]], dtype=np.int64)


def remi_windows(piece: Piece, *, max_len: int, stride: float) -> list[np.ndarray]:
    """Windows (L, 1) of at most `max_len` tokens; `stride` as a fraction of `max_len`."""
    ids = remi_ids(piece)
    step = max(1, int(max_len * stride))
    starts = range(0, max(1, len(ids) - max_len + step), step)
    return [ids[s:s + max_len, None] for s in starts if len(ids[s:s + max_len]) > 1]


def note_token_ids() -> list[int]:
    return sorted(i for name, i in remi_tokenizer().vocab.items() if name.startswith("Pitch_"))


def decode_remi(ids: np.ndarray) -> list[Note]:
    """REMI ids -> grid notes (through miditok, then symusic)."""
    tokenizer = remi_tokenizer()
    special = {tokenizer.vocab[name] for name in ("PAD_None", "BOS_None", "EOS_None")}
    clean = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in special]
    if not clean:
        return []
    score = tokenizer.decode(clean)
    tpq = score.ticks_per_quarter
    notes = []
    for track in score.tracks:
        instrument = instrument_of_program(track.program, is_drum=track.is_drum)
        if instrument is None:
            continue
        for n in track.notes:
            beat, position = divmod(round(n.time * RESOLUTION / tpq), RESOLUTION)
            notes.append(Note(beat, position, n.pitch, max(1, round(n.duration * RESOLUTION / tpq)), instrument))
    return notes


@torch.no_grad()
def generate_remi(
    model: CompoundTransformer, *, max_tokens: int, sampling: FieldSampling, seed: int = 0,
    use_cache: bool = True, device: torch.device | str = "cpu",
) -> Generated:
    """Sample tokens after BOS until EOS or `max_tokens` (no grammar: REMI's own ordering is learnt)."""
    if max_tokens > model.max_len:
        raise UserError(f"max_tokens {max_tokens} exceeds the model's context of {model.max_len}")
    tokenizer = remi_tokenizer()
    eos, pad = tokenizer.vocab["EOS_None"], tokenizer.vocab["PAD_None"]
    allowed = torch.ones(model.vocab_sizes[0], dtype=torch.bool)
    allowed[[pad, tokenizer.vocab["BOS_None"]]] = False
    generator = torch.Generator().manual_seed(seed)
    ids = [tokenizer.vocab["BOS_None"]]
    caches = model.new_caches(1, device=torch.device(device)) if use_cache else None
    started = time.perf_counter()
    logits = model(torch.as_tensor([[ids]], dtype=torch.long, device=device), caches=caches)[0]
    while len(ids) < max_tokens:
        token = sample_code(logits[0, -1].cpu(), allowed, sampling, generator)
        ids.append(token)
        if token == eos or len(ids) >= max_tokens:
            break
        if use_cache:
            logits = model(torch.as_tensor([[[token]]], dtype=torch.long, device=device), caches=caches)[0]
        else:
            logits = model(torch.as_tensor([ids], dtype=torch.long, device=device)[..., None])[0]
    return Generated(np.asarray(ids, dtype=np.int64)[:, None], 1, time.perf_counter() - started)
