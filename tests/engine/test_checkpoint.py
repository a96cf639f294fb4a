"""Checkpoints are safetensors + JSON, written atomically, and never unpickled."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from panformer.engine import checkpoint as ckpt
from panformer.engine.errors import UserError
from panformer.engine.parallel import (
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def config() -> dict:
    return ckpt.checkpoint_config(domain="toy", recipe={}, info={"a": 1}, fingerprint="x")


def test_round_trip_with_optimizer_state(tmp_path):
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(2, 3)).sum().backward()
    opt.step()
    folder = ckpt.save_checkpoint(tmp_path / "epoch-0000", weights=full_model_state(m), config=config(),
                                  optimizer_state=full_optimizer_state(m, opt), progress={"epoch": 0})
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "state.json", "state.safetensors"]
    loaded = ckpt.load_checkpoint(folder)
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.weights[k], v)
    m2 = model()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    tensors, state = ckpt.load_training_state(folder)
    load_full_optimizer_state(m2, opt2, ckpt.optimizer_state(tensors, state))
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = model()
    first = ckpt.save_checkpoint(tmp_path / "epoch-0000", weights=full_model_state(m), config=config())
    ckpt.set_pointer(tmp_path, "LATEST", first.name)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill while writing the weights

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path / "epoch-0001", weights=full_model_state(m), config=config())
    assert not (tmp_path / "epoch-0001").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    assert ckpt.read_pointer(tmp_path, "LATEST") == first
    assert ckpt.load_checkpoint(tmp_path).path == first


def test_overwriting_a_folder_is_atomic(tmp_path, monkeypatch):
    m = model()
    folder = ckpt.save_checkpoint(tmp_path / "best", weights=full_model_state(m), config=config())
    before = (folder / ckpt.MODEL_FILE).read_bytes()
    monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path / "best", weights=full_model_state(m), config=config())
    assert (folder / ckpt.MODEL_FILE).read_bytes() == before


def test_pickle_file_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(model().state_dict(), folder / ckpt.MODEL_FILE)  # a pickle under the expected name
    (folder / ckpt.CONFIG_FILE).write_text(json.dumps(config()))
    with pytest.raises(UserError, match="unreadable"):
        ckpt.load_checkpoint(folder)


def test_checkpoint_of_another_domain_is_refused(tmp_path):
    folder = ckpt.save_checkpoint(tmp_path / "c", weights=full_model_state(model()), config=config())
    with pytest.raises(UserError, match="'toy' domain"):
        ckpt.load_checkpoint(folder, domain="speech")
