"""Video -> landmark Parquet with the MediaPipe Tasks landmarkers (VIDEO running mode).

Every frame of a video is run through the hand and pose landmarkers, or through the holistic one (face,
pose and hands) when its `.task` file is given; one ASL-Signs Parquet file is written per video (parts
not seen are NaN rows). Videos are processed in parallel, one process each. Hands are labelled as
MediaPipe reports them (the hand landmarker's handedness assumes a mirrored, selfie-style image).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panformer.engine.errors import UserError
from panformer.sign.landmarks import PART_SIZES, Landmarks, write_landmarks
from panformer.sign.task_files import OFFICIAL, cache_dir, cached_task_file

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
HAND_MODEL = "hand_landmarker.task"
POSE_MODELS = ("pose_landmarker_full.task", "pose_landmarker_heavy.task", "pose_landmarker_lite.task")
HOLISTIC_MODEL = "holistic_landmarker.task"
# The ASL-Signs schema keeps the 468 face-mesh points; newer face models add 10 iris points after them.
FACE_POINTS = PART_SIZES["face"]


class ExtractionWarning(UserWarning):
    """A video gave a result, but a partial one (no hands, or no person at all)."""


@dataclass(frozen=True)
class ModelFiles:
    """The landmarkers to run: the holistic one when given (face, pose and both hands in one model),
    else the hand and pose landmarkers."""

    hand: Path | None = None
    pose: Path | None = None
    holistic: Path | None = None


def find_models(models_dir: Path | None = None) -> ModelFiles:
    """The `.task` files in `models_dir` as they are; without it, the verified official files of the cache
    (downloaded once: see `panformer.sign.task_files`). A one-line error if something is missing."""
    if models_dir is None:
        folder = cache_dir()
        holistic = folder / HOLISTIC_MODEL
        if holistic.is_file():
            return ModelFiles(holistic=cached_task_file(HOLISTIC_MODEL, folder=folder))
        return ModelFiles(hand=cached_task_file(HAND_MODEL, folder=folder),
                          pose=cached_task_file(POSE_MODELS[0], folder=folder))
    folder = Path(models_dir)
    if not folder.is_dir():
        raise UserError(f"--models {folder}: not a folder; give the folder holding the MediaPipe .task files")
    if (folder / HOLISTIC_MODEL).is_file():
        return ModelFiles(holistic=folder / HOLISTIC_MODEL)
    hand = folder / HAND_MODEL
    pose = next((folder / name for name in POSE_MODELS if (folder / name).is_file()), None)
    if not hand.is_file() or pose is None:
        missing = [n for n in (HAND_MODEL, POSE_MODELS[0]) if not (folder / n).is_file()]
        urls = " and ".join(OFFICIAL[n].url for n in missing)
        raise UserError(f"MediaPipe model files missing in {folder}: download {urls} into {folder} "
                        f"(or put {HOLISTIC_MODEL} there)")
    return ModelFiles(hand=hand, pose=pose)


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """Send MediaPipe's C++ log lines (written straight to fd 2) to /dev/null, so errors stay one line."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _points(landmarks) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in landmarks], np.float32)


class HandAndPoseDetector:
    """The hand landmarker (two hands) and the pose landmarker (one person), frame by frame."""

    def __init__(self, models: ModelFiles) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        video = vision.RunningMode.VIDEO
        self.hands = vision.HandLandmarker.create_from_options(vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(models.hand)), running_mode=video, num_hands=2,
        ))
        self.pose = vision.PoseLandmarker.create_from_options(vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(models.pose)), running_mode=video, num_poses=1,
        ))

    def detect(self, image, stamp_ms: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        hand_result = self.hands.detect_for_video(image, stamp_ms)
        for points, handedness in zip(hand_result.hand_landmarks, hand_result.handedness, strict=True):
            found.setdefault(f"{handedness[0].category_name.lower()}_hand", _points(points))
        pose_result = self.pose.detect_for_video(image, stamp_ms)
        if pose_result.pose_landmarks:
            found["pose"] = _points(pose_result.pose_landmarks[0])
        return found

    def close(self) -> None:
        self.hands.close()
        self.pose.close()


class HolisticDetector:
    """The holistic landmarker: face mesh, pose and both hands of one person, frame by frame."""

    def __init__(self, models: ModelFiles) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        self.landmarker = vision.HolisticLandmarker.create_from_options(vision.HolisticLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(models.holistic)), running_mode=vision.RunningMode.VIDEO,
        ))

    def detect(self, image, stamp_ms: int) -> dict[str, np.ndarray]:
        return holistic_parts(self.landmarker.detect_for_video(image, stamp_ms))

    def close(self) -> None:
        self.landmarker.close()


def holistic_parts(result) -> dict[str, np.ndarray]:
    """A HolisticLandmarkerResult -> {part: (N, 3)} for the parts it found (face cut to the 468 mesh points)."""
    found: dict[str, np.ndarray] = {}
    for part, landmarks in (("face", result.face_landmarks), ("left_hand", result.left_hand_landmarks),
                            ("pose", result.pose_landmarks), ("right_hand", result.right_hand_landmarks)):
        if landmarks:
            found[part] = _points(landmarks)[: FACE_POINTS if part == "face" else None]
    return found


def _detect_frames(capture, models: ModelFiles, fps: float) -> list[dict[str, np.ndarray]]:
    """Per frame: {"face" | "left_hand" | "right_hand" | "pose": (N, 3)} for what the landmarkers saw."""
    import cv2
    import mediapipe as mp

    frames: list[dict[str, np.ndarray]] = []
    detector = HolisticDetector(models) if models.holistic is not None else HandAndPoseDetector(models)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            stamp = round(len(frames) * 1000 / fps)  # VIDEO mode needs increasing timestamps
            frames.append(detector.detect(image, stamp))
    finally:
        detector.close()
    return frames


def extract_video_landmarks(video: Path, *, models_dir: Path | None = None, models: ModelFiles | None = None) -> Landmarks:
    """Run both landmarkers over every frame of `video`; warns if no hand (or no person) is ever seen."""
    import cv2

    video = Path(video)
    models = models or find_models(models_dir)
    with _quiet_native_logs():
        capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise UserError(f"{video}: not a readable video; give an .mp4/.mov/.avi/.mkv/.webm file")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    try:
        with _quiet_native_logs():
            frames = _detect_frames(capture, models, fps)
    finally:
        capture.release()
    if not frames:
        raise UserError(f"{video}: no frames could be decoded; not a video or an empty one")
    parts = ("face", "left_hand", "pose", "right_hand") if models.holistic is not None else ("left_hand", "pose", "right_hand")
    landmarks = Landmarks.missing(len(frames), parts)
    for t, found in enumerate(frames):
        for part, points in found.items():
            landmarks.parts[part][t] = points
    seen_hands = any("left_hand" in f or "right_hand" in f for f in frames)
    seen_pose = any("pose" in f for f in frames)
    if not seen_hands and not seen_pose:
        warnings.warn(f"{video.name}: no person seen in any frame; the landmark file holds only NaN rows",
                      ExtractionWarning, stacklevel=2)
    elif not seen_hands:
        warnings.warn(f"{video.name}: no hands seen; only pose landmarks", ExtractionWarning, stacklevel=2)
    return landmarks


def video_files(source: Path) -> list[Path]:
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise UserError(f"{source}: the folder holds no videos ({', '.join(VIDEO_SUFFIXES)})")
        return found
    if not source.is_file():
        raise UserError(f"{source} does not exist; give a video file or a folder of videos")
    if source.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"{source}: not a video ({', '.join(VIDEO_SUFFIXES)})")
    return [source]


def _extract_one(video: Path, output: Path, models: ModelFiles) -> tuple[Path, int, list[str]]:
    """Worker: one video -> one Parquet file; returns (file, frames, warning lines)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExtractionWarning)
        landmarks = extract_video_landmarks(video, models=models)
    path = write_landmarks(output / f"{video.stem}.parquet", landmarks)
    return path, landmarks.num_frames, [str(w.message) for w in caught if issubclass(w.category, ExtractionWarning)]


def extract_all(
    source: Path, output: Path, *, models_dir: Path | None = None, workers: int | None = None, progress: bool = True,
) -> list[tuple[Path, int, list[str]]]:
    """Extract every video of `source` into `output`, `workers` processes at a time, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    videos = video_files(source)
    models = find_models(models_dir)
    # Check every input opens as a video before starting: bad input fails before anything is written.
    import cv2

    for video in videos:
        with _quiet_native_logs():  # FFmpeg complains on fd 2 about files it cannot parse
            capture = cv2.VideoCapture(str(video))
            ok = capture.isOpened() and capture.read()[0]
            capture.release()
        if not ok:
            raise UserError(f"{video}: not a readable video; give an .mp4/.mov/.avi/.mkv/.webm file")
    workers = max(1, min(workers or os.cpu_count() or 1, len(videos)))
    results = []
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("videos", total=len(videos))
        if workers == 1:
            for video in videos:
                results.append(_extract_one(video, output, models))
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_extract_one, video, output, models) for video in videos]
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.advance(task)
    return sorted(results)
