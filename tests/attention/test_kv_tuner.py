"""KVTuner-style search of per-layer key/value precision pairs: exact under an additive loss (against
brute force over every combination), Pareto pruning, budgets, and the spec file QuantizedKVCache reads."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from shared_attention import Attention, KVPrecision, QuantizedKVCache
from shared_attention.kv_tuner import (
    DEFAULT_CANDIDATES,
    caches_from_spec,
    pair_bits,
    pareto_front,
    read_precision_spec,
    search_layer_precisions,
    write_precision_spec,
)
from shared_attention.masks import Causal

from .conftest import assert_close


def _additive_loss(costs: list[dict[str, float]], calls: list | None = None):
    def loss(config):
        if calls is not None:
            calls.append([str(p) for p in config])
        return 1.0 + sum(costs[i].get(str(p), 0.0) for i, p in enumerate(config))

    return loss


def test_search_is_the_brute_force_optimum_under_an_additive_loss():
    g = torch.Generator().manual_seed(0)
    layers = 3
    # Layer 1 is sensitive in its keys, the others barely care: costs fall with bits, plus noise.
    costs = []
    for layer in range(layers):
        row = {}
        for name in DEFAULT_CANDIDATES:
            pair = KVPrecision.parse(name)
            key_weight = 1.0 if layer == 1 else 0.05
            row[name] = key_weight * 2.0 ** -pair.key_bits + 0.05 * 2.0 ** -pair.value_bits
            row[name] += 1e-4 * float(torch.rand((), generator=g))
        costs.append(row)
    calls = []
    result = search_layer_precisions(_additive_loss(costs, calls), num_layers=layers, budget_bits=5.0)
    assert len(calls) == 1 + layers * len(DEFAULT_CANDIDATES) + 1  # baseline, sensitivities, final
    best = min(
        (c for c in itertools.product(DEFAULT_CANDIDATES, repeat=layers)
         if sum(pair_bits(KVPrecision.parse(p)) for p in c) <= 5.0 * 2 * layers),
        key=lambda c: sum(costs[i][p] for i, p in enumerate(c)),
    )
    assert result.spec == ",".join(best)
    assert result.precisions[1].key_bits == 8  # the sensitive layer keeps its keys
    assert result.average_bits <= 5.0
    assert result.loss == pytest.approx(1.0 + sum(costs[i][p] for i, p in enumerate(best)))
    assert result.baseline_loss == 1.0


def test_pareto_front_drops_dominated_pairs():
    increase = {KVPrecision.parse(n): v for n, v in
                {"K8V8": 0.0, "K8V4": 0.01, "K4V8": 0.05, "K4V4": 0.02, "K2V2": 0.5}.items()}
    front = [str(p) for p in pareto_front(increase)]
    assert front == ["K2V2", "K4V4", "K8V4", "K8V8"]  # K4V8: same bits as K8V4 and worse


def test_budget_too_small_is_an_error():
    with pytest.raises(ValueError, match="budget"):
        search_layer_precisions(_additive_loss([{}, {}]), num_layers=2, budget_bits=1.0)


def test_spec_round_trip_builds_the_caches(tmp_path):
    result = search_layer_precisions(_additive_loss([{"K2V2": 1.0}, {}]), num_layers=2, budget_bits=4.0,
                                     candidates=["K8V8", "K4V4", "K2V2"])
    path = tmp_path / "kv.json"
    write_precision_spec(path, result, key_axis="token", group_size=16)
    # Layer 0 avoids K2V2 (its cost); layer 1 costs nothing at any pair, so it takes the fewest bits.
    assert json.loads(path.read_text())["precision"] == result.spec == "K4V4,K2V2"
    assert read_precision_spec(path) == {"precision": "K4V4,K2V2", "key_axis": "token", "group_size": 16}
    caches = caches_from_spec(path, num_layers=2, batch_size=1, num_kv_heads=2, max_len=8, head_dim=8)
    assert [str(c.precision) for c in caches] == ["K4V4", "K2V2"] and caches[0].key_axis == "token"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="layers"):
        caches_from_spec(path, num_layers=3, batch_size=1, num_kv_heads=2, max_len=8, head_dim=8)


@pytest.mark.parametrize("content", ["{", '{"precision": "K9V4", "key_axis": "channel", "group_size": 32}',
                                     '{"precision": "K8V4"}'])
def test_bad_spec_file_names_the_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"bad\.json: not a KV precision spec"):
        read_precision_spec(path)


def test_search_on_a_real_two_layer_stack_prefers_the_sensitive_layer():
    """Calibration loss = output error of two stacked layers decoded through quantised caches."""
    torch.manual_seed(0)
    layers = [Attention(32, 2).eval() for _ in range(2)]
    with torch.no_grad():
        layers[1].kv_proj.weight[:32] *= 6.0  # sharp keys in layer 1: its key quantisation matters more
    x = torch.randn(2, 24, 32)

    def run(caches):
        h = x
        for layer, cache in zip(layers, caches, strict=True):
            steps = [layer(h[:, t : t + 1], mask=Causal(), cache=cache) for t in range(h.shape[1])]
            h = h + torch.cat(steps, dim=1)
        return h

    with torch.no_grad():
        exact = run([QuantizedKVCache(2, 2, 24, 16, precision="fp") for _ in layers])

        def loss(config):
            caches = [QuantizedKVCache(2, 2, 24, 16, precision=p, key_axis="token") for p in config]
            return float((run(caches) - exact).pow(2).mean())

        result = search_layer_precisions(loss, num_layers=2, budget_bits=5.0, candidates=["K8V8", "K2V2"])
    assert result.spec == "K2V2,K8V8"
    assert_close(torch.tensor(result.baseline_loss), torch.tensor(0.0))
