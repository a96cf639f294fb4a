"""Fixtures for the speech tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from panformer.speech.scoring import libri2mix_samples_dir


@pytest.fixture
def libri2mix_samples() -> Path:
    """MossFormer2's published Libri2Mix separations (evaluation only: never trained or tuned on)."""
    folder = libri2mix_samples_dir()
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here (evaluation-only data outside the repo)")
    return folder
