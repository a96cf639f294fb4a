"""The relational domain: recipes, the entity-prediction task (pretrain, zero-shot, fine-tune) and predict.

A recipe names a database (`data.source`) and a task: SQL returning (entity_id, timestamp, label), run
on the database itself in its own dialect (DuckDB, SQLite or PostgreSQL SQL), split in time at
`val_timestamp` and `test_timestamp`. Before fine-tuning, the model can be pretrained (`pretrain.steps`)
on other databases' masked cells and label cells; it is then scored zero-shot on this task's validation
and test rows, and those numbers join the test metrics (`zeroshot_*`), next to the tree baseline
(`trees_*`) and the majority class.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Domain, Metrics, RecipeChoice, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.runlog import console, progress_bar
from panformer.relational.baseline import aggregate_features, fit_trees
from panformer.relational.context_cache import (
    context_folder,
    open_contexts,
    write_contexts,
    writing_lock,
)
from panformer.relational.database import Database, read_database, seconds, task_timestamps
from panformer.relational.demo import VARIANTS, churn_sql, ensure_demo_database, name_of
from panformer.relational.model import RelationalTransformer
from panformer.relational.sampling import (
    BOOL,
    CHUNK_QUERIES,
    NUMBER,
    Contexts,
    encode_database,
    iter_contexts,
    parent_slots,
)

# --- recipe --------------------------------------------------------------------------------------


class TaskSpec(StrictModel):
    name: str = Field("churn", description="the label column's name (the label cell's column embedding)")
    entity_table: str | None = Field(None, description="table whose primary key entity_id refers to")
    sql: str | None = Field(None, description="SQL returning entity_id, timestamp, label, in the database's own "
                                              "dialect (DuckDB, SQLite or PostgreSQL; demo: built in)")
    kind: Literal["binary", "regression"] = "binary"
    val_timestamp: str = "2024-08-15"
    test_timestamp: str = "2024-10-01"


class RelationalData(StrictModel):
    source: str = Field("demo", description="demo[:VARIANT:SEED], duckdb:///F, sqlite:///F, postgresql://...")
    schema_file: str | None = Field(None, description="YAML keys/time columns for databases without constraints")
    cache_dir: str = Field("runs/data/relational", description="where generated demo databases, the DuckDB "
                                                                "copies of SQLite/PostgreSQL sources and the sampled "
                                                                "contexts (memory-mapped) are written")
    demo_customers: int = Field(500, ge=20)
    max_cells: int = Field(96, ge=8, description="cells per context (the label cell included)")
    children_per_table: int = Field(8, ge=1, description="latest rows per table pointing to the entity")
    text_encoder: Literal["hashing"] = Field(
        "hashing", description="text cells: hashed words (no sentence-embedding model is installed offline)")
    baseline: bool = Field(True, description="also fit the tree baseline and report trees_* in the metrics")
    task: TaskSpec = TaskSpec()


class PretrainConfig(StrictModel):
    sources: list[str] = Field(default_factory=lambda: ["demo:stream:1", "demo:gym:2"],
                               description="databases pretrained on (demo variants carry their churn task)")
    steps: int = Field(0, ge=0, description="masked-cell pretraining steps before fine-tuning (0 = none)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    mask_prob: float = Field(0.15, ge=0, lt=1, description="fraction of number/bool cells masked")
    init_from: str | None = Field(None, description="start from this run's weights (same model size), e.g. a "
                                                    "model pretrained once and fine-tuned on many tasks")


class RelationalModelConfig(StrictModel):
    dim: int = Field(64, ge=8)
    depth: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class RelationalRecipe(Recipe):
    domain: Literal["relational"] = "relational"
    data: RelationalData = RelationalData()
    model: RelationalModelConfig = RelationalModelConfig()
    pretrain: PretrainConfig = PretrainConfig()


# --- data ----------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """A database, its encoding and the task's labelled rows."""

    database: Database
    entity_table: str
    rows: pd.DataFrame  # entity_id, timestamp, label
    source: str


def resolve_source(source: str, data: RelationalData) -> tuple[Database, TaskSpec]:
    """The database named by `source` and the task spec to run on it (the demo's churn task built in)."""
    task = data.task
    if source == "demo" or source.startswith("demo:"):
        parts = source.split(":")
        variant, seed = (parts[1] if len(parts) > 1 else "shop"), (parts[2] if len(parts) > 2 else "0")
        if variant not in VARIANTS or not seed.isdigit() or len(parts) > 3:
            raise UserError(f"--data {source}: use demo or demo:VARIANT:SEED with VARIANT in {', '.join(VARIANTS)}")
        path = ensure_demo_database(Path(data.cache_dir), variant=variant, seed=int(seed),
                                    customers=data.demo_customers)
        db = read_database(f"duckdb:///{path}")
        task = task.model_copy(update={"entity_table": task.entity_table or name_of(variant, "customers"),
                                       "sql": task.sql or churn_sql(variant)})
        return db, task
    if source.startswith("relbench:"):
        from panformer.relational.relbench_source import read_relbench

        return read_relbench(source, task)
    return read_database(source, schema_file=data.schema_file, cache_dir=data.cache_dir), task


def load_task_data(source: str, data: RelationalData) -> tuple[TaskData, TaskSpec]:
    db, spec = resolve_source(source, data)
    if spec.sql is None or spec.entity_table is None:
        raise UserError(f"recipe data.task: give `sql` and `entity_table` for {source}")
    if spec.entity_table not in db.schema:
        raise UserError(f"recipe data.task.entity_table: '{spec.entity_table}' is not a table of {source}; "
                        f"known: {', '.join(db.schema)}")
    rows = db.task_sql(spec.sql, what="recipe data.task.sql")
    missing = {"entity_id", "timestamp", "label"} - set(rows.columns)
    if missing:
        raise UserError(f"recipe data.task.sql: the query returns no column(s) {sorted(missing)}; "
                        f"select entity_id, timestamp, label")
    # Times first, then the sort: SQLite returns them as text.
    rows["timestamp"] = task_timestamps(rows["timestamp"], what="recipe data.task.sql")
    rows = rows.dropna(subset=["label"]).sort_values(["timestamp", "entity_id"], kind="stable").reset_index(drop=True)
    return TaskData(db, spec.entity_table, rows[["entity_id", "timestamp", "label"]], source), spec


class ContextDataset(Dataset):
    """Precomputed contexts (in memory or memory-mapped from the cache) with a label per context; masks
    number/bool cells at random when pretraining."""

    def __init__(self, contexts: Contexts, labels: np.ndarray, *, mask_prob: float = 0.0) -> None:
        self.c, self.labels, self.mask_prob = contexts, labels.astype(np.float32), mask_prob

    def __len__(self) -> int:
        return len(self.c)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c = self.c
        kind = torch.from_numpy(c.kind[i].astype(np.int64))
        maskable = (kind == NUMBER) | (kind == BOOL)
        masked = maskable & (torch.rand(kind.shape) < self.mask_prob) if self.mask_prob else torch.zeros_like(maskable)
        ids = {name: torch.from_numpy(getattr(c, name)[i].astype(np.int64))  # compact on the host, int64 batched
               for name in ("words", "column_words", "table_words", "column_ids", "row_ids", "parent_rows")}
        value = torch.from_numpy(np.array(c.value[i]))  # a copy: the cache's maps are read-only
        return {"kind": kind, "value": value, **ids,
                "label_pos": torch.tensor(int(c.label_pos[i])), "masked": masked, "target": torch.tensor(self.labels[i])}


def build_contexts(task: TaskData, rows: pd.DataFrame, data: RelationalData, *, split: str,
                   stats_before: float | None, label_name: str) -> Contexts:
    """The contexts of `rows`, memory-mapped from the cache under `data.cache_dir`: sampled into it
    first unless an earlier run on the same database and task did (see `context_cache`)."""
    ids, times = rows["entity_id"].to_numpy(), seconds(rows["timestamp"])
    folder = context_folder(task.database, cache_dir=Path(data.cache_dir), split=split,
                            entity_table=task.entity_table, entity_ids=ids, timestamps=times,
                            stats_before=stats_before, label_name=label_name, max_cells=data.max_cells,
                            children_per_table=data.children_per_table)
    contexts = open_contexts(folder)
    if contexts is None:
        with writing_lock(folder):
            contexts = open_contexts(folder)  # another process may have written it while this one waited
            if contexts is None:
                return _sample_into(folder, task, ids, times, data, split=split, stats_before=stats_before,
                                    label_name=label_name)
    console.print(f"relational: {split} contexts ({len(contexts):,}) reused from {folder}", soft_wrap=True)
    return contexts


def _sample_into(folder: Path, task: TaskData, ids: np.ndarray, times: np.ndarray, data: RelationalData, *,
                 split: str, stats_before: float | None, label_name: str) -> Contexts:
    """Sample the contexts of (ids, times) chunk by chunk straight into the cache folder, with a progress bar."""
    enc = encode_database(task.database, stats_before=stats_before, label_name=label_name)
    with progress_bar(enabled=len(ids) > CHUNK_QUERIES) as bar:
        progress = (bar, bar.add_task(f"{split} contexts from {task.source}", total=len(ids), status=""))
        parts = iter_contexts(enc, task.entity_table, ids, times, max_cells=data.max_cells,
                              children_per_table=data.children_per_table, source=task.source, progress=progress)
        return write_contexts(folder, parts, count=len(ids), max_cells=data.max_cells, parents=parent_slots(enc),
                              about={"source": task.source, "split": split})


def split_rows(rows: pd.DataFrame, spec: TaskSpec, source: str) -> dict[str, pd.DataFrame]:
    val, test = pd.Timestamp(spec.val_timestamp), pd.Timestamp(spec.test_timestamp)
    if not val < test:
        raise UserError("recipe data.task: val_timestamp must come before test_timestamp")
    parts = {"train": rows[rows.timestamp < val], "val": rows[(rows.timestamp >= val) & (rows.timestamp < test)],
             "test": rows[rows.timestamp >= test]}
    for name, part in parts.items():
        if part.empty:
            raise UserError(f"{source}: the task has no {name} rows; move data.task.val_timestamp/test_timestamp")
    return {k: v.reset_index(drop=True) for k, v in parts.items()}


# --- metrics -------------------------------------------------------------------------------------


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


class EntityMetrics(Metrics):
    """AUROC and accuracy (binary) or MAE (regression) of the label cell; `extra` is appended as is."""

    def __init__(self, kind: str, *, label_mean: float, label_std: float, extra: dict[str, float]) -> None:
        self.kind, self.mean, self.std, self.extra = kind, label_mean, label_std, extra
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        self.scores.append(outputs["score"].detach().float().cpu().numpy())
        self.labels.append(batch["target"].cpu().numpy())

    def compute(self) -> dict[str, float]:
        scores, labels = np.concatenate(self.scores), np.concatenate(self.labels)
        if self.kind == "binary":
            out = {"auroc": auroc(labels, scores), "accuracy": float(((scores > 0.5) == (labels > 0.5)).mean())}
        else:
            out = {"mae": float(np.abs(scores - labels).mean()) * self.std}  # z-scores back to label units
        return out | self.extra


# --- the task ------------------------------------------------------------------------------------


def fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


class EntityTask(Task):
    demo_output_name = "predictions.csv"

    def __init__(self, recipe: RelationalRecipe) -> None:
        binary = recipe.data.task.kind == "binary"
        self.monitor = "auroc" if binary else "mae"
        self.monitor_mode = "max" if binary else "min"
        self._recipe = recipe  # pretraining (in fit_statistics) reads it

    def load_splits(self, recipe: RelationalRecipe, *, source: str | None = None) -> Splits:
        data = recipe.data
        source = source or data.source
        started = time.perf_counter()
        task, spec = load_task_data(source, data)
        parts = split_rows(task.rows, spec, source)
        stats_before = float(seconds(pd.Series([pd.Timestamp(spec.val_timestamp)]))[0])
        labels = {k: v["label"].to_numpy(np.float64) for k, v in parts.items()}
        mean, std = float(labels["train"].mean()), float(labels["train"].std() or 1.0)
        if spec.kind == "binary" and not set(np.unique(task.rows["label"])) <= {0, 1}:
            raise UserError("recipe data.task.sql: a binary task's labels must be 0/1; use kind: regression")
        contexts = {k: build_contexts(task, v, data, split=k, stats_before=stats_before, label_name=spec.name)
                    for k, v in parts.items()}
        n = sum(len(v) for v in parts.values())
        rate = n / max(time.perf_counter() - started, 1e-9)
        info: dict[str, Any] = {
            "source": source, "task": spec.model_dump(), "entity_table": task.entity_table,
            "label_mean": mean, "label_std": std, "rows": {k: len(v) for k, v in parts.items()},
            "positive_rate_train": mean if spec.kind == "binary" else None, "contexts_per_s_with_sql": rate,
        }
        info["baselines"] = self.baselines(task, parts, spec, data) if data.baseline else {}
        console.print(f"relational: {n} task rows from {source} ({', '.join(f'{k} {len(v)}' for k, v in parts.items())}), "
                      f"contexts ready at {rate:,.0f}/s")
        datasets = {}
        for name in parts:
            target = labels[name] if spec.kind == "binary" else (labels[name] - mean) / std
            datasets[name] = ContextDataset(contexts[name], target)
        fp = fingerprint([source, spec.model_dump_json(), str(len(task.rows)), str(float(task.rows["label"].sum())),
                          str(data.max_cells), str(data.children_per_table)])
        return Splits(train=datasets["train"], val=datasets["val"], test=datasets["test"], info=info, fingerprint=fp)

    @staticmethod
    def baselines(task: TaskData, parts: dict[str, pd.DataFrame], spec: TaskSpec, data: RelationalData) -> dict:
        """Trees on aggregates (selected by early stopping on the training rows) and the majority class."""
        feats = {k: aggregate_features(task.database, task.entity_table, v["entity_id"].to_numpy(), v["timestamp"])
                 for k, v in parts.items()}
        y = {k: v["label"].to_numpy(np.float64) for k, v in parts.items()}
        trees = fit_trees(feats["train"], y["train"], kind=spec.kind)
        test_x = feats["test"].to_numpy()
        if spec.kind == "binary":
            prob = trees.predict_proba(test_x)[:, 1]
            majority = float(y["train"].mean() > 0.5)
            return {"trees_auroc": auroc(y["test"], prob), "trees_accuracy": float(((prob > 0.5) == y["test"]).mean()),
                    "majority_accuracy": float((y["test"] == majority).mean()), "majority_auroc": 0.5}
        return {"trees_mae": float(np.abs(trees.predict(test_x) - y["test"]).mean()),
                "mean_mae": float(np.abs(y["train"].mean() - y["test"]).mean())}

    def build_model(self, recipe: RelationalRecipe, info: dict[str, Any]) -> nn.Module:
        m = recipe.model
        model = RelationalTransformer(dim=m.dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                                      dropout=m.dropout)
        # Zero-shot scores measured after pretraining travel with the weights (NaN when not pretrained).
        model.register_buffer("zero_shot", torch.full((4,), float("nan")))
        freeze_unused_head(model, kind=recipe.data.task.kind)
        return model

    # -- pretraining and zero-shot --

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        recipe: RelationalRecipe = self._recipe
        cfg = recipe.pretrain
        if cfg.init_from is not None:
            from panformer.engine.checkpoint import load_checkpoint

            weights = load_checkpoint(Path(cfg.init_from), domain="relational").weights
            try:
                model.load_state_dict(weights)
            except RuntimeError:
                raise UserError(f"pretrain.init_from {cfg.init_from}: the weights do not fit this recipe's model "
                                f"section; use the same dim/depth/num_heads/mlp_ratio") from None
        if cfg.steps == 0:
            if cfg.init_from is not None:  # score the loaded model zero-shot before fine-tuning
                self._record_zero_shot(model, splits, loss=float("nan"), note=f"loaded {cfg.init_from}")
            return
        started = time.perf_counter()
        sets = []
        for source in cfg.sources:
            task, spec = load_task_data(source, recipe.data.model_copy(update={"task": TaskSpec(name=recipe.data.task.name)}))
            ctx = build_contexts(task, task.rows, recipe.data, split="pretrain", stats_before=None,
                                 label_name=spec.name)
            sets.append(ContextDataset(ctx, task.rows["label"].to_numpy(np.float64), mask_prob=cfg.mask_prob))
        data = torch.utils.data.ConcatDataset(sets)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(recipe.train.seed))
        device = next(model.parameters()).device
        model.requires_grad_(True)  # masked-cell pretraining trains both heads
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
        step, losses = 0, []
        model.train()
        while step < cfg.steps:
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = pretrain_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                if step >= cfg.steps:
                    break
        # No stale gradients: the frozen head's would otherwise count in fine-tuning's gradient clipping
        # (and a resumed run, which skips pretraining, would clip differently).
        model.zero_grad(set_to_none=True)
        freeze_unused_head(model, kind=recipe.data.task.kind)
        self._record_zero_shot(model, splits, loss=float(np.mean(losses[-20:])),
                               note=f"pretrained {cfg.steps} steps on {', '.join(cfg.sources)} in "
                                    f"{time.perf_counter() - started:.1f}s (masked-cell loss "
                                    f"{np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f})")

    @staticmethod
    def _record_zero_shot(model: nn.Module, splits: Splits, *, loss: float, note: str) -> None:
        """Score the label cell zero-shot on validation and test; the numbers travel in a buffer."""
        device = next(model.parameters()).device
        val = zero_shot_scores(model, splits.val, device)
        test = zero_shot_scores(model, splits.test, device)
        model.zero_shot.copy_(torch.tensor([val["auroc"], test["auroc"], test["accuracy"], loss]))
        console.print(f"relational: {note}; zero-shot AUROC val {val['auroc']:.4f} test {test['auroc']:.4f}, "
                      f"test accuracy {test['accuracy']:.4f}")

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch)
        if self.monitor == "auroc":
            logit = out["label_bool"].float()
            loss = nn.functional.binary_cross_entropy_with_logits(logit, batch["target"])
            score = torch.sigmoid(logit)
        else:
            pred = out["label_number"].float()
            loss = nn.functional.mse_loss(pred, batch["target"])
            score = pred
        zero_shot = getattr(model, "module", model).zero_shot  # DDP wraps the model
        return loss, {"score": score.detach(), "zero_shot": zero_shot}

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return EntityMetrics(info["task"]["kind"], label_mean=info["label_mean"], label_std=info["label_std"],
                             extra={})

    def test_metrics(self, info: dict[str, Any]) -> Metrics:
        extra = dict(info.get("baselines") or {})
        return ZeroShotAware(info["task"]["kind"], label_mean=info["label_mean"], label_std=info["label_std"],
                             extra=extra)

    # -- predict --

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: RelationalRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        try:
            queries = pd.read_csv(input_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            raise UserError(f"--input {input_path}: not a CSV file; give columns entity_id,timestamp") from None
        missing = {"entity_id", "timestamp"} - set(queries.columns)
        if missing:
            raise UserError(f"--input {input_path}: missing column(s) {sorted(missing)}; give entity_id,timestamp")
        try:
            queries["timestamp"] = pd.to_datetime(queries["timestamp"])
        except (ValueError, TypeError):
            raise UserError(f"--input {input_path}: a timestamp is not a date; use e.g. 2024-10-15") from None
        db, spec = resolve_source(info["source"], recipe.data)
        stats_before = float(seconds(pd.Series([pd.Timestamp(spec.val_timestamp)]))[0])
        enc = encode_database(db, stats_before=stats_before, label_name=spec.name)
        data = recipe.data
        model.eval()
        scores = []
        # Scored a chunk of contexts at a time, as they are sampled: nothing but the scores is kept.
        with progress_bar(enabled=len(queries) > CHUNK_QUERIES) as bar:
            progress = (bar, bar.add_task(f"contexts from {input_path}", total=len(queries), status=""))
            for _, part in iter_contexts(enc, info["entity_table"], queries["entity_id"].to_numpy(),
                                         seconds(queries["timestamp"]), max_cells=data.max_cells,
                                         children_per_table=data.children_per_table, source=str(input_path),
                                         progress=progress):
                dataset = ContextDataset(part, np.zeros(len(part)))
                for start in range(0, len(dataset), 256):
                    batch = self.collate([dataset[i] for i in range(start, min(start + 256, len(dataset)))])
                    out = model({k: v.to(device) for k, v in batch.items()})
                    if spec.kind == "binary":
                        scores.append(torch.sigmoid(out["label_bool"].float()).cpu().numpy())
                    else:
                        scores.append(out["label_number"].float().cpu().numpy() * info["label_std"]
                                      + info["label_mean"])
        score = np.concatenate(scores) if scores else np.zeros(0)
        result = queries[["entity_id", "timestamp"]].copy()
        if spec.kind == "binary":
            result[f"{spec.name}_probability"] = score.round(6)
            result[spec.name] = (score > 0.5).astype(int)
        else:
            result[spec.name] = score
        with atomic_path(output_path) as tmp:
            result.to_csv(tmp, index=False)
        written = [output_path]
        if plot and spec.kind == "binary":
            from panformer.engine.plots import pyplot, save_png

            plt = pyplot()
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.hist(score, bins=20, range=(0, 1), color="tab:blue")
            ax.set_xlabel(f"predicted {spec.name} probability")
            ax.set_ylabel("entities")
            fig.tight_layout()
            written.append(save_png(fig, output_path.with_suffix(".png")))
        return written

    def demo_input(self, recipe: RelationalRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The test period's first prediction time, for twenty entities of the demo task."""
        task, spec = load_task_data(info["source"], recipe.data)
        rows = task.rows[task.rows.timestamp >= pd.Timestamp(spec.test_timestamp)]
        first = rows[rows.timestamp == rows.timestamp.min()].head(20)
        path = Path(workdir) / "entities.csv"
        with atomic_path(path) as tmp:
            first[["entity_id", "timestamp"]].to_csv(tmp, index=False)
        return path


class ZeroShotAware(EntityMetrics):
    """Test metrics plus the zero-shot numbers the model carries from pretraining."""

    zero_shot: Tensor | None = None

    def update(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        super().update(batch, outputs)
        self.zero_shot = outputs["zero_shot"].detach().cpu()

    def compute(self) -> dict[str, float]:
        out = super().compute()
        if self.zero_shot is not None and not torch.isnan(self.zero_shot[0]):
            z = self.zero_shot.tolist()
            out |= {"zeroshot_val_auroc": z[0], "zeroshot_auroc": z[1], "zeroshot_accuracy": z[2]}
            if np.isfinite(z[3]):  # NaN when the weights were loaded (init_from), not pretrained here
                out["pretrain_loss"] = z[3]
        return out


def freeze_unused_head(model: nn.Module, *, kind: str) -> None:
    """Fine-tuning reads one head (booleans for binary tasks, numbers for regression); the other one is
    trained only by pretraining. Freezing it keeps every trainable parameter in the loss (DDP needs that)."""
    model.bool_head.requires_grad_(kind == "binary")
    model.number_head.requires_grad_(kind != "binary")


def pretrain_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Masked-cell loss: MSE on masked numbers, BCE on masked booleans and on the label cell."""
    out = model(batch)
    masked, kind, value = batch["masked"], batch["kind"], batch["value"].float()
    numbers = masked & (kind == NUMBER)
    bools = masked & (kind == BOOL)
    loss = nn.functional.binary_cross_entropy_with_logits(out["label_bool"].float(), batch["target"])
    if numbers.any():
        loss = loss + nn.functional.mse_loss(out["cells"][numbers].float(), value[numbers])
    if bools.any():
        loss = loss + nn.functional.binary_cross_entropy_with_logits(out["bools"][bools].float(), value[bools])
    return loss


@torch.no_grad()
def zero_shot_scores(model: nn.Module, dataset: ContextDataset, device: torch.device) -> dict[str, float]:
    model.eval()
    scores = []
    for start in range(0, len(dataset), 256):
        items = [dataset[i] for i in range(start, min(start + 256, len(dataset)))]
        batch = {k: v.to(device) for k, v in torch.utils.data.default_collate(items).items()}
        scores.append(torch.sigmoid(model(batch)["label_bool"].float()).cpu().numpy())
    model.train()
    score, labels = np.concatenate(scores), dataset.labels
    return {"auroc": auroc(labels, score), "accuracy": float(((score > 0.5) == (labels > 0.5)).mean())}


# Bare paths `read_database` opens (DuckDB, else SQLite by suffix).
DATABASE_SUFFIXES = (".duckdb", ".sqlite", ".sqlite3", ".db")


class RelationalDomain(Domain):
    name = "relational"
    recipe_type = RelationalRecipe
    cli_app = "panformer.relational.cli:app"

    def task(self, recipe: Recipe) -> Task:
        return EntityTask(recipe)  # type: ignore[arg-type]

    def default_recipe(self, data: str | None) -> RecipeChoice:
        if data is None or data == "demo" or data.startswith("demo:"):
            where = "no --data" if data is None else data
            return RecipeChoice("demo", f"{where}: generated shop database, pretraining then fine-tuning on churn")
        if data.startswith("relbench:"):
            return RecipeChoice("database", "a RelBench task: its SQL, entity table and cut-offs come from RelBench")
        own_task = "its task is the recipe's data.task (sql, entity_table, cut-offs): --set them for yours"
        if "://" in data:
            return RecipeChoice("database", f"a database URI; {own_task}")
        path = Path(data)
        if path.suffix.lower() in DATABASE_SUFFIXES and path.is_file():
            return RecipeChoice("database", f"a database file; {own_task}")
        problem = "no such file" if not path.exists() else f"not a database file ({', '.join(DATABASE_SUFFIXES)})"
        raise self.unrecognised_data(data, f"{problem}; give demo, relbench:<dataset>/<task>, a database file or "
                                           "a duckdb:///, sqlite:/// or postgresql:// URI")
