"""The Relational Transformer's four metadata masks (built from shared_attention's SameRow, SameColumn and
ForeignKey) and its forward pass, on contexts sampled from a small generated shop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panformer.relational.database import read_database, seconds
from panformer.relational.demo import churn_sql
from panformer.relational.domain import ContextDataset, pretrain_loss
from panformer.relational.model import RelationalTransformer
from panformer.relational.sampling import encode_database, sample_contexts
from tests.relational.helpers import small_shop


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    db = read_database(f"duckdb:///{small_shop(tmp_path_factory.mktemp('shop'), customers=40)}")
    rows = db.sql(churn_sql("shop"), what="task").head(16)
    enc = encode_database(db)
    ctx = sample_contexts(enc, "customers", rows.entity_id.to_numpy(), seconds(rows.timestamp), max_cells=48,
                          children_per_table=3)
    data = ContextDataset(ctx, rows.label.to_numpy(np.float64), mask_prob=0.3)
    torch.manual_seed(0)
    return torch.utils.data.default_collate([data[i] for i in range(len(data))])


def test_masks_follow_rows_columns_and_foreign_keys(batch):
    model = RelationalTransformer(dim=16, depth=1, num_heads=2)
    masks = model.masks(batch)
    length = batch["kind"].shape[1]
    dense = {name: m.dense(length, length)[:, 0] for name, m in masks.items() if m is not None}
    rows, parents, valid = batch["row_ids"], batch["parent_rows"], batch["kind"] > 0
    for b in range(4):
        n = int(valid[b].sum())
        r, p = rows[b, :n], parents[b, :n]
        links = torch.zeros(n, n, dtype=torch.bool)  # cell i's row points to cell j's row
        for i in range(n):
            links[i] = torch.isin(r, p[i][p[i] >= 0])
        same_row = r[:, None] == r[None, :]
        assert torch.equal(dense["feature"][b, :n, :n], same_row | links)
        assert torch.equal(dense["neighbour"][b, :n, :n], links.T)
        col = batch["column_ids"][b, :n]
        assert torch.equal(dense["column"][b, :n, :n], col[:, None] == col[None, :])
    # The customer's cells (row 0) see the cells of rows pointing to it (its orders and reviews).
    assert dense["neighbour"][0, 0].sum() > 0


def test_forward_and_pretraining_loss(batch):
    torch.manual_seed(0)
    model = RelationalTransformer(dim=16, depth=2, num_heads=2)
    out = model(batch)
    assert out["cells"].shape == batch["kind"].shape and out["label_bool"].shape == (len(batch["kind"]),)
    assert torch.isfinite(out["cells"]).all()
    loss = pretrain_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.number.weight.grad is not None
    # Information flows from the rows pointing to the entity into the label cell.
    changed = {k: v.clone() for k, v in batch.items()}
    child_cells = (batch["row_ids"] > 0) & (batch["kind"] > 0)
    changed["value"][child_cells] += 3.0
    with torch.no_grad():
        assert not torch.allclose(model(batch)["label_bool"], model(changed)["label_bool"])
