"""A piano-roll PNG of grid notes: time in beats across, pitch up, one colour per instrument."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from panformer.engine.plots import pyplot, save_png
from panformer.music.representation import RESOLUTION, Note


def piano_roll_png(notes: Sequence[Note], path: Path, *, title: str = "", prompt_beats: float | None = None,
                   beats_per_bar: float = 4.0) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    instruments = sorted({n.instrument for n in notes})
    colours = plt.get_cmap("tab10")
    for i, instrument in enumerate(instruments):
        mine = [n for n in notes if n.instrument == instrument]
        colour = colours(i % 10)
        ax.broken_barh([], (0, 0), facecolors=colour, label=f"{instrument} ({len(mine)})")  # legend entry only
        for n in mine:
            ax.broken_barh([((n.beat * RESOLUTION + n.position) / RESOLUTION, n.duration / RESOLUTION)],
                           (n.pitch - 0.4, 0.8), facecolors=colour)
    end = max(((n.beat * RESOLUTION + n.position + n.duration) / RESOLUTION for n in notes), default=1.0)
    bar = 0.0
    while bar <= end:
        ax.axvline(bar, color="0.85", linewidth=0.6, zorder=0)
        bar += beats_per_bar
    if prompt_beats is not None:
        ax.axvline(prompt_beats, color="red", linestyle="--", linewidth=1.2, label="prompt ends")
    pitches = [n.pitch for n in notes] or [60]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, end + 0.5)
    ax.set_xlabel("beat")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or f"{len(notes)} notes")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
