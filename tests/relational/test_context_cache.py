"""Contexts out of core (issue #22): `train` writes each split's contexts to a memory-mapped cache keyed by
the database file, reads them back equal to the in-memory ones, reuses them on a second start-up without
sampling, never reads a half-written cache, and samples again when the database file changes."""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pytest

from panformer.relational import domain, sampling
from panformer.relational.context_cache import open_contexts
from panformer.relational.database import read_database, seconds
from panformer.relational.demo import churn_sql
from panformer.relational.domain import (
    EntityTask,
    RelationalData,
    RelationalRecipe,
    TaskData,
    TaskSpec,
    build_contexts,
)
from panformer.relational.sampling import encode_database, sample_contexts
from tests.relational.helpers import small_shop

STATS_BEFORE = float(seconds(np.array(["2024-08-15"], "datetime64[ns]"))[0])


def options(tmp_path) -> RelationalData:
    return RelationalData(cache_dir=str(tmp_path / "cache"), max_cells=40, children_per_table=3, baseline=False,
                          task=TaskSpec(entity_table="customers", sql=churn_sql("shop")))


def shop_task(path) -> TaskData:
    source = f"duckdb:///{path}"
    db = read_database(source)
    rows = db.sql(churn_sql("shop"), what="task")
    return TaskData(db, "customers", rows[["entity_id", "timestamp", "label"]], source)


def in_memory(task: TaskData, data: RelationalData) -> sampling.Contexts:
    enc = encode_database(task.database, stats_before=STATS_BEFORE, label_name="churn")
    return sample_contexts(enc, "customers", task.rows.entity_id.to_numpy(), seconds(task.rows.timestamp),
                           max_cells=data.max_cells, children_per_table=data.children_per_table)


def assert_same(a: sampling.Contexts, b: sampling.Contexts) -> None:
    assert len(a) == len(b)
    for name in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def cache_folders(tmp_path) -> list[str]:
    root = tmp_path / "cache" / "contexts"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []  # not the lock files


def test_cached_contexts_equal_the_in_memory_ones(tmp_path, monkeypatch):
    path = small_shop(tmp_path / "db", customers=60)
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    task, data = shop_task(path), options(tmp_path)
    monkeypatch.setattr(sampling, "CHUNK_QUERIES", 50)  # several chunks appended to the files
    cached = build_contexts(task, task.rows, data, split="train", stats_before=STATS_BEFORE, label_name="churn")
    assert len(task.rows) > 50 * 3
    assert all(isinstance(getattr(cached, name), np.memmap) for name in cached.__dataclass_fields__)
    assert_same(cached, in_memory(task, data))
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before  # the database file is never written
    [folder] = cache_folders(tmp_path)
    assert folder.startswith(f"{path.stem}-train-")
    item = domain.ContextDataset(cached, task.rows.label.to_numpy(np.float64))[3]  # a training item, from the maps
    np.testing.assert_array_equal(item["value"].numpy(), cached.value[3])


def test_a_second_start_up_reuses_the_cache_without_sampling(tmp_path, monkeypatch):
    path = small_shop(tmp_path / "db", customers=60)
    data = options(tmp_path).model_copy(update={"source": f"duckdb:///{path}"})
    recipe = RelationalRecipe(data=data)
    first = EntityTask(recipe).load_splits(recipe)
    assert len(cache_folders(tmp_path)) == 3  # train, val, test

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(domain, "iter_contexts", no_sampling)
    monkeypatch.setattr(domain, "encode_database", no_sampling)
    second = EntityTask(recipe).load_splits(recipe)
    for name in ("train", "val", "test"):
        assert_same(getattr(first, name).c, getattr(second, name).c)
    assert second.fingerprint == first.fingerprint and len(cache_folders(tmp_path)) == 3


def test_an_interrupted_write_is_never_used(tmp_path, monkeypatch):
    task, data = shop_task(small_shop(tmp_path / "db", customers=60)), options(tmp_path)
    monkeypatch.setattr(sampling, "CHUNK_QUERIES", 50)
    real = domain.iter_contexts

    def interrupted(*args, **kwargs):
        for i, part in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the split
            yield part

    monkeypatch.setattr(domain, "iter_contexts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_contexts(task, task.rows, data, split="train", stats_before=STATS_BEFORE, label_name="churn")
    assert cache_folders(tmp_path) == []  # nothing left that looks like a cache
    monkeypatch.setattr(domain, "iter_contexts", real)
    whole = build_contexts(task, task.rows, data, split="train", stats_before=STATS_BEFORE, label_name="churn")
    assert_same(whole, in_memory(task, data))
    # A cache whose files were cut short (a disk filled up, a copy stopped) is not read either.
    [folder] = cache_folders(tmp_path)
    kind = tmp_path / "cache" / "contexts" / folder / "kind.npy"
    kind.write_bytes(kind.read_bytes()[:-100])
    assert open_contexts(kind.parent) is None


def test_a_changed_database_file_gets_a_new_cache(tmp_path):
    path = small_shop(tmp_path / "db", customers=60)
    data = options(tmp_path)
    task = shop_task(path)
    old = build_contexts(task, task.rows, data, split="train", stats_before=STATS_BEFORE, label_name="churn")
    task.database.connection.close()
    with duckdb.connect(str(path)) as con:  # the user edits the database between two runs
        con.execute("UPDATE orders SET amount = amount * amount")
    task = shop_task(path)
    new = build_contexts(task, task.rows, data, split="train", stats_before=STATS_BEFORE, label_name="churn")
    assert len(cache_folders(tmp_path)) == 2
    assert_same(new, in_memory(task, data))
    assert not np.array_equal(np.asarray(old.value), np.asarray(new.value))
