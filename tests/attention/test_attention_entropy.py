"""The attention-entropy probe: the entropy math against explicit probabilities, closed forms
(uniform attention, HiLo's windows and pooled keys), padding, unsupported variants, and the engine's
``train.log_attention_entropy`` log entries."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from panformer.engine.errors import UserError
from panformer.engine.trainer import Trainer
from shared_attention import ALiBi, Attention, AttentionEntropy, Differential, HiLo, SlidingWindow
from shared_attention.backends.reference import reference_attention
from shared_attention.entropy import softmax_entropy
from shared_attention.masks import Dense
from shared_attention.score_mods import SoftCap
from tests.attention.conftest import assert_close, qkv
from tests.engine.toy_domain import ToyDomain, ToyRecipe, ToyTask


def test_softmax_entropy_matches_the_reference_probabilities():
    q, k, _ = qkv(2, 4, 2, 9, 9, 8)
    mask = Dense(torch.rand(1, 1, 9, 9) > 0.4) | SlidingWindow(1)  # every row keeps at least itself
    score_mod = SoftCap(5.0)
    # The oracle's probabilities: attend to the identity over the keys.
    eye = torch.eye(9).expand(2, 2, 9, 9)
    probs = reference_attention(q, k, eye, mask=mask, score_mod=score_mod)
    expected = -(probs * probs.clamp(min=1e-30).log()).sum(-1)
    assert_close(softmax_entropy(q, k, mask=mask, score_mod=score_mod), expected)
    empty = Dense(torch.zeros(1, 1, 9, 9, dtype=torch.bool))
    assert softmax_entropy(q, k, mask=empty).isnan().all()  # no key: no distribution


def _blank_queries(layer: Attention) -> None:
    with torch.no_grad():  # q = 0: every allowed key gets the same weight
        layer.q_proj.weight.zero_()
        if layer.q_proj.bias is not None:
            layer.q_proj.bias.zero_()


class TwoLayers(nn.Module):
    def __init__(self, first: Attention, second: Attention) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([first, second])

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        for block in self.blocks:
            x = x + block(x, **kwargs)
        return x


def test_uniform_attention_has_entropy_log_of_the_keys_seen_and_padding_is_left_out():
    torch.manual_seed(0)
    model = TwoLayers(Attention(16, 2), Attention(16, 2))
    _blank_queries(model.blocks[0])
    x = torch.randn(3, 10, 16)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 6:] = False  # 6 real tokens
    with AttentionEntropy(model) as probe:
        out = model(x, key_padding_mask=valid)
    # Batch rows see 10, 6 and 10 keys; padded queries are not counted: (10 + 6 + 10 real queries).
    expected = (20 * math.log(10) + 6 * math.log(6)) / 26
    assert probe.layer_means().keys() == {"blocks.0", "blocks.1"}
    assert abs(probe.layer_means()["blocks.0"] - expected) < 1e-5
    assert probe.head_means()["blocks.0"].shape == (2,)
    assert 0 < probe.layer_means()["blocks.1"] < math.log(10)
    assert all(block.probe is None for block in model.blocks)
    assert torch.equal(model(x, key_padding_mask=valid), out)  # measuring changed nothing


def test_hilo_heads_entropy_is_log_window_and_log_pooled_keys():
    layer = Attention(32, 4, variant=HiLo((4, 8), window_size=2, alpha=0.5))
    _blank_queries(layer)
    with AttentionEntropy(layer) as probe:
        layer(torch.randn(2, 32, 32))
    heads = probe.head_means()[""]
    expected = torch.tensor([math.log(4)] * 2 + [math.log(8)] * 2)  # 2x2 windows; 32 / 4 pooled keys
    assert_close(heads, expected)


def test_probe_refuses_layers_without_a_softmax_distribution():
    model = TwoLayers(Attention(16, 2), Attention(16, 2, variant=Differential()))
    with pytest.raises(ValueError, match=r"blocks\.1 \(DifferentialAttention\)"):
        AttentionEntropy(model)


def test_probe_measures_score_mods_of_the_layer():
    """ALiBi makes far keys unlikely: a lower entropy than the same queries without it."""
    torch.manual_seed(1)
    plain, alibi = Attention(32, 8), Attention(32, 8, position=ALiBi())  # slopes 1/2 .. 1/256
    alibi.load_state_dict(plain.state_dict())
    x = torch.randn(1, 12, 32)
    entropies = []
    for layer in (plain, alibi):
        with AttentionEntropy(layer) as probe:
            layer(x)
        entropies.append(probe.layer_means()[""])
    assert entropies[1] < entropies[0] - 0.1


# --- the engine's per-epoch log entry ----------------------------------------------------------------


class TokenModel(nn.Module):
    """The toy domain's 4 features as 4 tokens, through the core's Attention."""

    def __init__(self, variant=None) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 8)
        self.attention = Attention(8, 2, variant=variant)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x[..., None])
        return self.head((tokens + self.attention(tokens)).mean(1))


class TokenTask(ToyTask):
    def __init__(self, variant=None) -> None:
        self.variant = variant

    def build_model(self, recipe: ToyRecipe, info: dict[str, Any]) -> nn.Module:
        return TokenModel(self.variant)


class TokenDomain(ToyDomain):
    def __init__(self, variant=None) -> None:
        self.variant = variant

    def task(self, recipe):
        return TokenTask(self.variant)


def recipe(log: bool) -> ToyRecipe:
    return ToyRecipe.model_validate(
        {"train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "device": "cpu", "log_attention_entropy": log}}
    )


def test_engine_logs_each_layers_attention_entropy_per_epoch(tmp_path):
    Trainer(TokenDomain(), recipe(True), run_dir=tmp_path / "on").fit()
    records = [json.loads(line) for line in (tmp_path / "on" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert len(epochs) == 2
    for r in epochs:
        assert 0.0 < r["attention_entropy/attention"] < math.log(4) + 1e-4
    Trainer(TokenDomain(), recipe(False), run_dir=tmp_path / "off").fit()
    off = (tmp_path / "off" / "log.jsonl").read_text()
    assert "attention_entropy" not in off


def test_engine_names_the_layer_it_cannot_measure_before_training(tmp_path):
    with pytest.raises(UserError, match=r"train\.log_attention_entropy: .*attention \(DifferentialAttention\)"):
        Trainer(TokenDomain(Differential()), recipe(True), run_dir=tmp_path / "run").fit()
    assert not (tmp_path / "run").exists()
