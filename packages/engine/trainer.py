"""The one training loop every domain uses.

Selection happens on the validation split only; the test split is evaluated once, at the end, with the
selected weights. The loop is deterministic for a fixed seed, and `resume` continues from the last
checkpoint so that an interrupted run ends with the same weights as an uninterrupted one (exactly so with
`train.num_workers` 0). Checkpoints are written at every epoch's end and, in a single process, inside long
epochs every `train.checkpoint_minutes`; the first Ctrl-C stops at the next optimizer step with a checkpoint
(a second one aborts at once).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from panformer.engine import checkpoint as ckpt
from panformer.engine.config import Recipe, TrainConfig, recipe_to_yaml
from panformer.engine.cuda_graphs import GraphedTrainStep
from panformer.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    init_distributed,
    shutdown,
)
from panformer.engine.domain import Domain, Metrics, Splits, Task
from panformer.engine.errors import TrainingInterrupted, UserError
from panformer.engine.files import write_text_atomic
from panformer.engine.parallel import (
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    load_full_model_state,
    load_full_optimizer_state,
    wrap_for_training,
)
from panformer.engine.runlog import RunLog, console, progress_bar
from panformer.engine.tensors import map_tensors
from shared_attention.entropy import AttentionEntropy

SINGLE_PROCESS = DistInfo()
EpochCallback = Callable[[int, dict[str, float]], None]


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    return map_tensors(lambda t: t.to(device, non_blocking=True), batch)


def autocast(device: torch.device, precision: str, *, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the precision asks for it. ``cache=False`` inside CUDA graphs: cast weights must not
    outlive the captured step."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def make_loader(
    task: Task,
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    dist_info: DistInfo = SINGLE_PROCESS,
    num_workers: int = 0,
    skip_batches: int = 0,
) -> DataLoader:
    """The data order depends only on (seed, epoch), never on global RNG state: resume-safe.
    `skip_batches` leaves out the epoch's first batches (a run resumed inside an epoch); single process."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    # The order has its own generator: the loader draws its workers' base seed from `generator` when it
    # starts, which must not shift the order (a resumed epoch lists the order before the loader starts).
    order = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_777_777)
    if shuffle and dist_info.enabled:
        sampler = DistributedSampler(
            dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=order)
    else:
        sampler = SequentialSampler(dataset)
    if skip_batches:
        sampler = list(sampler)[skip_batches * batch_size:]  # the same order, its first batches left out
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=task.collate,
        num_workers=num_workers,
        generator=generator,
    )


def _cosine(progress: float, min_lr_ratio: float) -> float:
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(total_steps: int, *, warmup_ratio: float, min_lr_ratio: float) -> Callable[[int], float]:
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return _cosine((step - warmup) / max(1, total_steps - warmup), min_lr_ratio)

    return factor


# The training loss is read from the device (a host sync) at most this often, outside a time budget.
LOSS_READ_SECONDS = 0.5

# Under a time budget each pass of an epoch draws its own order: data key PASSES_PER_EPOCH * epoch + pass.
PASSES_PER_EPOCH = 100_000


@dataclass
class TrainingClock:
    """Training time spent against a budget (`train.minutes`): optimizer steps only, not validation."""

    budget: float  # seconds
    spent: float = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.spent / self.budget)


def warmup_cosine_by_time(clock: TrainingClock, *, warmup_ratio: float, min_lr_ratio: float) -> Callable[[int], float]:
    """The warmup + cosine schedule over the fraction of the time budget spent (the step count is ignored)."""

    def factor(_step: int) -> float:
        if clock.fraction < warmup_ratio:
            return max(clock.fraction / warmup_ratio, 0.01)  # never 0: the first step is taken at 0 s
        return _cosine((clock.fraction - warmup_ratio) / (1 - warmup_ratio), min_lr_ratio)

    return factor


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW; ``capturable`` keeps its step counts on the device, as a CUDA graph of the step needs. On CUDA
    with plain (unsharded) parameters, the fused kernel: one launch for all parameters instead of several per
    parameter group."""
    # No weight decay on biases, norms and embeddings' scalars (parameters of rank < 2).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and all(p.is_cuda and type(p.data) is torch.Tensor for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, capturable=capturable, fused=fused or None)


@torch.no_grad()
def evaluate_model(
    task: Task,
    model: nn.Module,
    dataset: Dataset,
    info: dict[str, Any],
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    metrics: Metrics | None = None,
) -> dict[str, float]:
    """Mean loss plus the task's metrics over a whole dataset (or into the `metrics` given)."""
    model.eval()
    metrics = metrics if metrics is not None else task.metrics(info)
    total_loss, count = 0.0, 0
    for batch in make_loader(task, dataset, batch_size=batch_size, shuffle=False):
        batch = to_device(batch, device)
        with autocast(device, precision):
            loss, outputs = task.loss(model, batch)
        n = task.batch_size_of(batch)
        total_loss += float(loss) * n
        count += n
        metrics.update(batch, outputs)
    if count == 0:
        raise UserError("the evaluation split is empty; give more data or a smaller validation fraction")
    return {"loss": total_loss / count, **metrics.compute()}


def entropy_probe(model: nn.Module) -> AttentionEntropy:
    """The probe behind ``train.log_attention_entropy``; a model it cannot measure is the recipe's error."""
    try:
        probe = AttentionEntropy(model)
    except ValueError as err:
        raise UserError(f"train.log_attention_entropy: {err}; set it to false") from None
    if not probe.layers:
        raise UserError("train.log_attention_entropy: the model has no shared_attention Attention layer; set it to false")
    return probe


@torch.no_grad()
def attention_entropy(
    task: Task, model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device, precision: str
) -> dict[str, float]:
    """Mean attention entropy (nats) of each Attention layer on the first batch of ``dataset``, keyed
    ``attention_entropy/<layer>`` (Zhai et al. 2023: collapsing entropy warns of unstable training)."""
    model.eval()
    batch = to_device(next(iter(make_loader(task, dataset, batch_size=batch_size, shuffle=False))), device)
    with entropy_probe(model) as probe, autocast(device, precision):
        task.loss(model, batch)
    return {f"attention_entropy/{name}": round(value, 4) for name, value in probe.layer_means().items()}


@dataclass
class EpochPosition:
    """Where a run stands inside an epoch: batches done (micro-batches) and their summed loss."""

    batches: int = 0
    loss_sum: float = 0.0
    samples: int = 0


class StopRequest:
    """The first SIGINT asks the loop to stop at the next optimizer step; the second raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]stopping at the next optimizer step with a checkpoint (Ctrl-C again: abort now)[/]")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    seconds: float


class Trainer:
    """Trains one recipe of one domain into a run directory."""

    def __init__(
        self,
        domain: Domain,
        recipe: Recipe,
        *,
        run_dir: Path,
        callbacks: Sequence[EpochCallback] = (),
        on_train_start: Callable[[], None] | None = None,
    ) -> None:
        """`callbacks` are called after every epoch with its validation metrics; `on_train_start` once, when
        data, model and optimizer are ready, just before the first training step (runs that share a device
        can start their clocks together)."""
        self.domain = domain
        self.task = domain.task(recipe)
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.on_train_start = on_train_start

    def _is_better(self, metrics: dict[str, float], best: dict[str, float] | None) -> bool:
        if best is None:
            return True
        key, sign = self.task.monitor, (1 if self.task.monitor_mode == "max" else -1)
        new, old = sign * metrics[key], sign * best[key]
        return new > old or (new == old and metrics["loss"] < best["loss"])

    def fit(self, *, source: str | None = None, resume: bool = False) -> FitResult:
        started = time.perf_counter()
        cfg = self.cfg
        device = select_device(cfg.device)
        dist_info = init_distributed(device)
        if dist_info.enabled and device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
            torch.cuda.set_device(device)
        try:
            result = self._fit(source=source, resume=resume, device=device, dist_info=dist_info, started=started)
        except BaseException:
            shutdown(dist_info, synchronise=False)  # the other ranks may never reach a barrier
            raise
        shutdown(dist_info)
        return result

    def _fit(
        self, *, source: str | None, resume: bool, device: torch.device, dist_info: DistInfo, started: float
    ) -> FitResult:
        cfg, domain, task, main = self.cfg, self.domain, self.task, dist_info.is_main
        seed_everything(cfg.seed)
        # Rank 0 first: it builds whatever the data cache lacks; the other ranks then read it.
        if not main:
            barrier(dist_info)
        splits: Splits = task.load_splits(self.recipe, source=source)
        if main:
            barrier(dist_info)
        if len(splits.train) == 0:
            raise UserError("the training split is empty; check --data")
        if cfg.minutes is not None and dist_info.enabled:
            raise UserError("train.minutes runs in one process: leave it out under torchrun (ranks would stop at "
                            "different steps)")
        graphed = cfg.cuda_graphs and device.type == "cuda"
        if graphed and dist_info.enabled:
            raise UserError("train.cuda_graphs captures the step of one process: leave it out under torchrun")
        model = task.build_model(self.recipe, splits.info).to(device)
        if cfg.log_attention_entropy:
            entropy_probe(model)  # fails before training, not after the first epoch
        steps_per_epoch = math.ceil(
            len(make_loader(task, splits.train, batch_size=cfg.batch_size, shuffle=True, dist_info=dist_info))
            / cfg.grad_accum
        )
        config = ckpt.checkpoint_config(
            domain=domain.name,
            recipe=self.recipe.model_dump(mode="json"),
            info=splits.info,
            fingerprint=splits.fingerprint,
            data_source=source,  # `--data` given to train (None: the recipe's own source)
        )

        start_epoch, step, best, best_epoch, bad_epochs = 0, 0, None, -1, 0
        position = EpochPosition()
        latest = None
        if resume:
            latest = ckpt.read_pointer(self.checkpoints, "LATEST")
            if latest is None:
                raise UserError(f"--resume {self.run_dir}: no complete checkpoint to resume from")
            saved = ckpt.load_checkpoint(latest, domain=domain.name)
            if saved.config["data_fingerprint"] != splits.fingerprint:
                raise UserError(f"--resume {self.run_dir}: the data differ from the run's (fingerprint mismatch)")
            model.load_state_dict(saved.weights)  # full weights, before any sharding
        else:
            task.fit_statistics(model, splits)
        # The optimizer comes after wrapping: FSDP2 replaces the parameters by sharded ones.
        train_model = wrap_for_training(model, strategy=cfg.distributed, dist_info=dist_info, device=device)
        optimizer = build_optimizer(model, cfg, capturable=graphed)
        clock = TrainingClock(60 * cfg.minutes) if cfg.minutes is not None else None
        if clock is not None:
            schedule = warmup_cosine_by_time(clock, warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio)
        else:
            schedule = warmup_cosine(
                cfg.epochs * steps_per_epoch, warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        if latest is not None:
            tensors, state = ckpt.load_training_state(latest)
            load_full_optimizer_state(model, optimizer, ckpt.optimizer_state(tensors, state))
            scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(tensors, state["rng"])
            progress = state["progress"]
            start_epoch, step = progress["epoch"] + 1, progress["step"]
            best, best_epoch, bad_epochs = progress["best"], progress["best_epoch"], progress["bad_epochs"]
            if clock is not None:
                clock.spent = progress.get("train_seconds_spent", 0.0)
            if "position" in progress:  # saved inside an epoch: finish that epoch first
                start_epoch -= 1
                position = EpochPosition(**progress["position"])
        if not resume and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "recipe.yaml", recipe_to_yaml(self.recipe))
        barrier(dist_info)
        if cfg.compile:
            train_model = torch.compile(train_model)

        log = RunLog(self.run_dir, enabled=main)
        stopped_early = False
        batches = len(make_loader(task, splits.train, batch_size=cfg.batch_size, shuffle=True, dist_info=dist_info))
        mid_epoch = cfg.checkpoint_minutes is not None and not dist_info.enabled
        last_saved = time.monotonic()

        def spent() -> dict[str, float]:
            return {} if clock is None else {"train_seconds_spent": clock.spent}

        def save_position(epoch: int, step: int, where: Callable[[], EpochPosition], *, stopping: bool) -> None:
            """Inside an epoch: a resumable checkpoint when it is time (or the user asked to stop). `where` gives
            the position reached (it reads the epoch's loss from the device, so only when a checkpoint is due)."""
            nonlocal last_saved
            due = mid_epoch and time.monotonic() - last_saved >= 60 * cfg.checkpoint_minutes
            if not (due or stopping) or not main:
                return
            position = where()
            folder = ckpt.save_checkpoint(
                self.checkpoints / f"epoch-{epoch:04d}-step-{step:09d}", weights=full_model_state(model),
                config={**config, "epoch": epoch, "step": step, "val_metrics": None},
                optimizer_state=full_optimizer_state(model, optimizer), scheduler=scheduler,
                progress={"epoch": epoch, "step": step, "best": best, "best_epoch": best_epoch,
                          "bad_epochs": bad_epochs, "position": vars(position), **spent()},
            )
            ckpt.set_pointer(self.checkpoints, "LATEST", folder.name)
            ckpt.prune(self.checkpoints, keep_last=cfg.keep_checkpoints)
            last_saved = time.monotonic()
            if stopping:
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch}, step {step}; continue with the same command and "
                    f"--resume {self.run_dir}"
                )

        if self.on_train_start is not None:
            self.on_train_start()
        with progress_bar(enabled=main) as bar, StopRequest() as stop:
            bar_task = bar.add_task(  # in batches; under a time budget, in seconds of training
                f"{domain.name} train" + ("" if clock is None else " (s)"),
                total=cfg.epochs * batches if clock is None else clock.budget,
                completed=start_epoch * batches + position.batches if clock is None else clock.spent, status="",
            )
            val_status = ""

            def show_batch(loss: float | None) -> None:
                """One more batch; its epoch's mean loss so far when it was read (None: not read this time)."""
                if loss is None:
                    bar.update(bar_task, advance=1)
                else:
                    bar.update(bar_task, advance=1, status=f"epoch {epoch}  loss {loss:.4f}{val_status}")
                if clock is not None:
                    bar.update(bar_task, completed=clock.spent)

            graphed_step = GraphedTrainStep(
                train_model, lambda m, b: task.loss(m, b)[0], optimizer, grad_clip=cfg.grad_clip,
                autocast=lambda: autocast(device, cfg.precision, cache=False),
            ) if graphed else None
            for epoch in range(start_epoch, cfg.epochs):
                if clock is not None and clock.spent >= clock.budget * (epoch + 1) / cfg.epochs:
                    # A long step already spent this share: nothing new to train or validate (so the budget
                    # is overrun by at most one step in all, not one per validation).
                    position = EpochPosition()
                    continue
                epoch_started = time.perf_counter()
                train_loss, step, samples = self._train_epoch(
                    train_model, optimizer, scheduler, splits, epoch, step, device, dist_info, show_batch,
                    position=position, after_step=lambda e, s, p: save_position(e, s, p, stopping=stop.requested),
                    clock=clock, graphed_step=graphed_step,
                )
                position = EpochPosition()
                train_seconds = time.perf_counter() - epoch_started
                if len(splits.val):
                    val = evaluate_model(
                        task, model, splits.val, splits.info,
                        batch_size=cfg.batch_size, device=device, precision=cfg.precision,
                    )
                    improved = self._is_better(val, best)
                else:  # no validation split (the recipe trains on all of it): the final epoch is kept
                    val, improved = {"loss": train_loss}, True
                entropy = attention_entropy(
                    task, model, splits.val, batch_size=cfg.batch_size, device=device, precision=cfg.precision
                ) if cfg.log_attention_entropy and len(splits.val) else {}
                if improved:
                    best, best_epoch, bad_epochs = val, epoch, 0
                else:
                    bad_epochs += 1
                # Gathering full state is collective (FSDP2): every rank takes part, rank 0 writes.
                weights = full_model_state(model)
                optimizer_state = full_optimizer_state(model, optimizer)
                if main:
                    if improved:
                        folder = ckpt.save_checkpoint(
                            self.checkpoints / f"best-{epoch:04d}", weights=weights,
                            config={**config, "epoch": epoch, "step": step, "val_metrics": val},
                        )
                        ckpt.set_pointer(self.checkpoints, "BEST", folder.name)
                    folder = ckpt.save_checkpoint(
                        self.checkpoints / f"epoch-{epoch:04d}", weights=weights,
                        config={**config, "epoch": epoch, "step": step, "val_metrics": val},
                        optimizer_state=optimizer_state, scheduler=scheduler,
                        progress={"epoch": epoch, "step": step, "best": best,
                                  "best_epoch": best_epoch, "bad_epochs": bad_epochs, **spent()},
                    )
                    ckpt.set_pointer(self.checkpoints, "LATEST", folder.name)
                    ckpt.prune(self.checkpoints, keep_last=cfg.keep_checkpoints)
                # Throughput over all ranks: each epoch covers the whole training split once (under a time
                # budget, one process, what it reached).
                samples = len(splits.train) if clock is None else samples
                record = {"epoch": epoch, "step": step, "seconds": round(time.perf_counter() - started, 2),
                          "train_seconds": round(train_seconds, 3), "train_samples": samples,
                          "train_samples_per_s": round(samples / train_seconds, 2),
                          "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                          **{f"val_{k}": v for k, v in val.items()}, **entropy, **task.epoch_log(splits)}
                log.write(record, step=step)
                if task.monitor in val:
                    val_status = f"  val {task.monitor} {val[task.monitor]:.4f} (best {best[task.monitor]:.4f})"
                bar.update(bar_task, status=f"epoch {epoch}  loss {train_loss:.4f}{val_status}")
                barrier(dist_info)
                for callback in self.callbacks:
                    callback(epoch, val)
                if cfg.patience is not None and bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
        log.close()

        barrier(dist_info)  # rank 0 has written the BEST pointer
        best_folder = ckpt.read_pointer(self.checkpoints, "BEST")
        assert best_folder is not None
        load_full_model_state(model, ckpt.load_checkpoint(best_folder).weights)
        test = evaluate_model(
            task, model, splits.test, splits.info,
            batch_size=cfg.batch_size, device=device, precision=cfg.precision, metrics=task.test_metrics(splits.info),
        )
        seconds = time.perf_counter() - started
        if main:
            summary = {"best_epoch": best_epoch, "stopped_early": stopped_early, "seconds": seconds,
                       "val": best, "test": test, "device": str(device), "world_size": dist_info.world_size}
            write_text_atomic(self.run_dir / "metrics.json", json.dumps(summary, indent=2, default=float))
            chosen = (f"best epoch {best_epoch}  val {task.monitor} {best[task.monitor]:.4f}" if task.monitor in best
                      else f"final epoch {best_epoch} (no validation split)")
            console.print(f"[green]done[/] {self.run_dir}  {chosen}  test {task.monitor} {test[task.monitor]:.4f}  "
                          f"({seconds:.1f}s)")
        return FitResult(self.run_dir, best_folder, best_epoch, best, test, seconds)

    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        splits: Splits,
        epoch: int,
        step: int,
        device: torch.device,
        dist_info: DistInfo,
        on_batch: Callable[[float | None], None],
        *,
        position: EpochPosition,
        after_step: Callable[[int, int, Callable[[], EpochPosition]], None],
        clock: TrainingClock | None = None,
        graphed_step: GraphedTrainStep | None = None,
    ) -> tuple[float, int, int]:
        """One epoch from `position` (the start, or where a mid-epoch checkpoint left it); `after_step` is
        called after every optimizer step with a function giving the position reached (it may checkpoint, or
        stop the run). `on_batch` gets the epoch's mean loss so far when it was read, else None.
        With a `clock` (a time budget) the epoch is passes over the training split until its share of the
        budget is spent. With a `graphed_step` (train.cuda_graphs) each step is one call of it, replayed from a
        CUDA graph. Returns the mean training loss, the step count and the samples seen."""
        cfg = self.cfg
        model.train()
        if dist_info.enabled:
            # Ranks must draw different augmentations and dynamic mixtures, reproducibly: (seed, epoch, rank).
            seed_everything(cfg.seed + 1_000_003 * (epoch + 1) + 7_919 * dist_info.rank)
        ends_at = None if clock is None else clock.budget * (epoch + 1) / cfg.epochs
        total, count = position.loss_sum, position.samples
        # The losses stay on the device and are read at most every LOSS_READ_SECONDS (a read waits for the
        # device, which then idles while the host prepares the next step); every step under a time budget,
        # whose clock needs the device finished.
        unread = torch.zeros((), device=device)
        last_read = time.monotonic()

        def read_loss() -> float:
            nonlocal total, last_read
            value = float(unread)
            if not math.isfinite(value):
                raise RuntimeError(f"non-finite loss at epoch {epoch}, by step {step}; lower train.lr")
            unread.zero_()
            total, last_read = total + value, time.monotonic()
            return total

        optimizer.zero_grad(set_to_none=True)
        last = time.perf_counter()
        for i, batch, pass_end in self._epoch_batches(splits, epoch, dist_info, position, timed=clock is not None):
            batch = to_device(batch, device)
            last_micro = (i + 1) % cfg.grad_accum == 0 or pass_end
            if graphed_step is not None:  # forward, backward, clipping and the update in one replay
                loss, last_micro = graphed_step(batch), True
            else:
                with gradient_sync(model, enabled=last_micro or not dist_info.enabled):
                    with autocast(device, cfg.precision):
                        loss, _ = self.task.loss(model, batch)
                    (loss / cfg.grad_accum).backward()
            n = self.task.batch_size_of(batch)
            unread += loss.detach().float() * n
            count += n
            if clock is not None or time.monotonic() - last_read >= LOSS_READ_SECONDS:
                on_batch(read_loss() / count)
            else:
                on_batch(None)
            if last_micro:
                if graphed_step is None:
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                if clock is not None:  # before the schedule's next value: it reads the time spent
                    # (the loss read above waited for the device, so this step's optimizer work is the only
                    # part not yet done: it is counted in the next step's time)
                    clock.spent += time.perf_counter() - last
                scheduler.step()
                if graphed_step is None:  # a graph's gradients stay where its replays write them
                    optimizer.zero_grad(set_to_none=True)
                step += 1
            epoch_over = pass_end if clock is None else last_micro and clock.spent >= ends_at
            if last_micro and not epoch_over:
                after_step(epoch, step, lambda i=i, count=count: EpochPosition(i + 1, read_loss(), count))
                last = time.perf_counter()  # a checkpoint it wrote is not training time
            if epoch_over:
                break
        read_loss()
        return all_reduce_mean(total / max(count, 1), dist_info), step, count

    def _epoch_batches(
        self, splits: Splits, epoch: int, dist_info: DistInfo, position: EpochPosition, *, timed: bool
    ) -> Iterator[tuple[int, Any, bool]]:
        """(index in the epoch, batch, last of its pass) from `position` on: one pass over the training split,
        or with `timed` one pass after another (each its own order) until the caller stops."""
        cfg = self.cfg
        per_pass = len(make_loader(self.task, splits.train, batch_size=cfg.batch_size, shuffle=True,
                                   dist_info=dist_info))
        first = position.batches // per_pass if timed else 0
        for pass_ in itertools.count(first) if timed else [0]:
            skip = position.batches - pass_ * per_pass if pass_ == first else 0
            loader = make_loader(
                self.task, splits.train, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                epoch=PASSES_PER_EPOCH * epoch + pass_ if timed else epoch, dist_info=dist_info,
                num_workers=cfg.num_workers, skip_batches=skip,
            )
            for i, batch in enumerate(loader, start=pass_ * per_pass + skip):
                yield i, batch, i + 1 == (pass_ + 1) * per_pass
