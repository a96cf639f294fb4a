"""Offline search of per-layer key/value precision pairs for ``QuantizedKVCache``, KVTuner-style.

KVTuner (Li, Xing, Li, Qu, Zhen, Yao, Liu, Pan, Yuan 2025, "KVTuner: Sensitivity-Aware Layer-wise Mixed
Precision KV Cache Quantization for Efficient and Nearly Lossless LLM Inference", arXiv:2502.04420)
observes that layers differ in how much key and value quantisation hurt, and searches one (key bits,
value bits) pair per layer on calibration data under a memory budget. This is that search, exact for
an additive loss model:

1. sensitivity: the calibration loss with one layer at a candidate pair and every other layer in full
   precision, minus the all-full-precision loss (layers x candidates evaluations);
2. per layer, only the pairs on the (bits, loss increase) Pareto front stay (KVTuner's intra-layer
   pruning: K8V4 beats K4V8 where keys are the sensitive side);
3. a dynamic programme picks one pair per layer minimising the summed increase with the mean of
   (key bits + value bits) / 2 over layers at most ``budget_bits``;
4. the chosen configuration is evaluated as a whole (its true calibration loss, interactions included).

``calibration_loss`` is any callable mapping one KVPrecision per layer to a loss (e.g. NLL of a
calibration split decoded through ``quantized_caches``); the model is the caller's. The result is
written as a small JSON spec (``write_precision_spec``) that ``caches_from_spec`` turns back into
per-layer ``QuantizedKVCache`` objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared_attention.quantized_cache import (
    KVPrecision,
    QuantizedKVCache,
    layer_precisions,
    quantized_caches,
)

DEFAULT_CANDIDATES = ("K8V8", "K8V4", "K4V8", "K4V4", "K4V2", "K2V4", "K2V2")
FULL = KVPrecision()


def pair_bits(pair: KVPrecision) -> int:
    """Key plus value bits per cached element pair (full precision counted as 16)."""
    return (pair.key_bits or 16) + (pair.value_bits or 16)


@dataclass
class PrecisionSearch:
    """What the search found: one pair per layer, its calibration loss, and what it was chosen from."""

    precisions: list[KVPrecision]
    loss: float  # calibration loss of ``precisions`` evaluated together
    baseline_loss: float  # every layer in full precision
    budget_bits: float
    sensitivity: list[dict[str, float]] = field(default_factory=list)  # per layer: pair -> loss increase
    front: list[list[str]] = field(default_factory=list)  # per layer: the Pareto-optimal pairs

    @property
    def spec(self) -> str:
        """"K8V4,K4V4,...": what ``layer_precisions`` / ``quantized_caches`` read."""
        return ",".join(str(p) for p in self.precisions)

    @property
    def average_bits(self) -> float:
        return sum(pair_bits(p) for p in self.precisions) / (2 * len(self.precisions))


def pareto_front(increase: dict[KVPrecision, float]) -> list[KVPrecision]:
    """The pairs no other pair beats on both bits (fewer or equal) and loss increase (lower or equal)."""
    front = []
    for pair, cost in increase.items():
        dominated = any(
            (pair_bits(o) <= pair_bits(pair) and c <= cost) and (pair_bits(o) < pair_bits(pair) or c < cost)
            for o, c in increase.items()
        )
        if not dominated:
            front.append(pair)
    return sorted(front, key=pair_bits)


def cheapest_under_budget(fronts: Sequence[dict[KVPrecision, float]], max_total_bits: int) -> list[KVPrecision]:
    """One pair per layer minimising the summed increase with summed pair bits <= ``max_total_bits``
    (a multiple-choice knapsack over small integer weights: exact by dynamic programming)."""
    best: dict[int, tuple[float, list[KVPrecision]]] = {0: (0.0, [])}
    for options in fronts:
        step: dict[int, tuple[float, list[KVPrecision]]] = {}
        for used, (cost, chosen) in best.items():
            for pair, increase in options.items():
                total = used + pair_bits(pair)
                if total <= max_total_bits and (total not in step or cost + increase < step[total][0]):
                    step[total] = (cost + increase, [*chosen, pair])
        best = step
    if not best:
        smallest = sum(min(pair_bits(p) for p in options) for options in fronts)
        raise ValueError(f"no precision pairs fit the budget: the fewest bits need a mean of "
                         f"{smallest / (2 * len(fronts)):.2f} bits per element")
    return min(best.items(), key=lambda entry: (entry[1][0], entry[0]))[1][1]  # ties: the fewer bits


def search_layer_precisions(
    calibration_loss: Callable[[list[KVPrecision]], float],
    *,
    num_layers: int,
    budget_bits: float,
    candidates: Sequence[str | KVPrecision] = DEFAULT_CANDIDATES,
    progress: Callable[[str], None] | None = None,
) -> PrecisionSearch:
    """Search one key/value pair per layer under a mean budget of ``budget_bits`` per cached element
    (e.g. 4.0: on average as small as K4V4) on the caller's calibration loss (lower is better)."""
    pairs = [KVPrecision.parse(c) for c in candidates]
    if not pairs:
        raise ValueError("the precision search needs at least one candidate pair")
    say = progress or (lambda message: None)
    baseline = calibration_loss([FULL] * num_layers)
    sensitivity, fronts = [], []
    for layer in range(num_layers):
        increase = {}
        for pair in pairs:
            config = [FULL] * num_layers
            config[layer] = pair
            increase[pair] = calibration_loss(config) - baseline
            say(f"layer {layer} {pair}: {increase[pair]:+.5f}")
        sensitivity.append({str(p): v for p, v in increase.items()})
        fronts.append({p: increase[p] for p in pareto_front(increase)})
    chosen = cheapest_under_budget(fronts, int(budget_bits * 2 * num_layers))
    loss = calibration_loss(chosen)
    say(f"chosen {','.join(map(str, chosen))}: {loss - baseline:+.5f}")
    return PrecisionSearch(
        precisions=chosen, loss=loss, baseline_loss=baseline, budget_bits=budget_bits,
        sensitivity=sensitivity, front=[[str(p) for p in front] for front in fronts],
    )


def write_precision_spec(path: str | Path, result: PrecisionSearch, *, key_axis: str, group_size: int) -> None:
    """Write ``result`` as JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    payload = {
        "precision": result.spec,
        "key_axis": key_axis,
        "group_size": group_size,
        "average_bits": result.average_bits,
        "budget_bits": result.budget_bits,
        "calibration_loss": result.loss,
        "baseline_loss": result.baseline_loss,
        "sensitivity": result.sensitivity,
        "pareto_front": result.front,
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(temporary, path)


def read_precision_spec(path: str | Path) -> dict:
    """The spec's settings: ``precision`` ("K8V4,K4V4,..."), ``key_axis``, ``group_size``."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        settings = {"precision": spec["precision"], "key_axis": spec["key_axis"], "group_size": int(spec["group_size"])}
        layer_precisions(settings["precision"], len(settings["precision"].split(",")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a KV precision spec ({error}); write one with write_precision_spec") from None
    return settings


def caches_from_spec(
    path: str | Path, *, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int, **options
) -> list[QuantizedKVCache]:
    """One QuantizedKVCache per layer at the spec's pairs, key axis and group size."""
    settings = read_precision_spec(path)
    return quantized_caches(
        settings["precision"], num_layers=num_layers, batch_size=batch_size, num_kv_heads=num_kv_heads,
        max_len=max_len, head_dim=head_dim, key_axis=settings["key_axis"], group_size=settings["group_size"],
        **options,
    )


__all__ = [
    "DEFAULT_CANDIDATES",
    "PrecisionSearch",
    "caches_from_spec",
    "cheapest_under_budget",
    "pair_bits",
    "pareto_front",
    "read_precision_spec",
    "search_layer_precisions",
    "write_precision_spec",
]
