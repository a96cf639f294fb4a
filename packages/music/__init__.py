"""Music: the Multitrack Music Transformer (MMT) from MIDI in to MIDI out, on shared_attention.

- `representation`: MMT's compound events (type, beat, position, pitch, duration, instrument);
- `midi`: MIDI files (symusic) and music21 scores to grid notes, and grid notes back to MIDI;
- `data`: folders of MIDI files and the music21 corpus, cached, split by piece, windowed;
- `model`: a decoder-only transformer with one embedding and one head per field;
- `generate`: field-aware sampling with grammar constraints and the core's KV cache;
- `metrics` / `evaluation`: per-field NLL, muspy-style musical metrics, sampling speed;
- `remi`: the REMI+ (miditok) single-field baseline; `domain` / `cli`: the engine's task and CLI.

    python -m panformer.music.cli train --recipe demo --out runs/music/demo
    python -m panformer.music.cli predict --checkpoint runs/music/demo --instruments piano,violin --output a.mid
"""
