"""TGB link-prediction datasets through the py-tgb package: its arrays become our Events (time-sorted,
nodes re-indexed, edge features kept); without the package, a one-line error says what to install."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from panformer.engine.errors import UserError
from panformer.graphs.temporal import tgb_events


def fake_tgb(monkeypatch, full_data: dict | None = None, error: Exception | None = None) -> None:
    """Install a stand-in `tgb.linkproppred.dataset` with py-tgb's LinkPropPredDataset interface."""

    class LinkPropPredDataset:
        def __init__(self, name: str, root: str, preprocess: bool = True) -> None:
            if error is not None:
                raise error
            self.full_data = full_data

    module = types.ModuleType("tgb.linkproppred.dataset")
    module.LinkPropPredDataset = LinkPropPredDataset
    for name, mod in (("tgb", types.ModuleType("tgb")), ("tgb.linkproppred", types.ModuleType("tgb.linkproppred")),
                      ("tgb.linkproppred.dataset", module)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_tgb_arrays_become_time_sorted_events(monkeypatch, tmp_path):
    fake_tgb(monkeypatch, {
        "sources": np.array([10, 7, 10]), "destinations": np.array([7, 42, 42]),
        "timestamps": np.array([30, 10, 20]), "edge_feat": np.array([[3.0], [1.0], [2.0]]),
    })
    events = tgb_events("tgbl-toy", root=tmp_path)
    assert events.nodes == ["7", "10", "42"] and events.source == "tgb:tgbl-toy"
    assert events.t.tolist() == [10.0, 20.0, 30.0]
    assert [events.nodes[i] for i in events.src] == ["7", "10", "10"]
    assert [events.nodes[i] for i in events.dst] == ["42", "42", "7"]
    assert events.features[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_without_the_package_or_offline_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tgb", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install py-tgb"):
        tgb_events("tgbl-wiki", root=tmp_path)
    fake_tgb(monkeypatch, error=ConnectionError("Max retries exceeded\nwith url ..."))
    with pytest.raises(UserError, match=r"could not provide it \(Max retries exceeded\); it downloads once") as err:
        tgb_events("tgbl-wiki", root=tmp_path)
    assert "\n" not in str(err.value)
