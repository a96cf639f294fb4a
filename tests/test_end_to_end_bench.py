"""apps/bench/end_to_end.py: the tiny CPU wiring check of our own rows, the table it renders (compiled rows,
a peer that fails, rows of ours alone), the relational inputs (the same masks for both models) and, where
the peer's source is in .peers/, the relational pair itself."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "apps/bench/end_to_end.py"
RT_PEER = ROOT / ".peers/relational-transformer/src/rt/model/net.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))  # the script imports its sibling `hardware`
    try:
        spec = importlib.util.spec_from_file_location("end_to_end_bench", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("end_to_end_bench", None)
        sys.path.remove(str(BENCH.parent))


def run_bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    out = tmp_path / "report.md"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--iters", "1", "--warmup", "1", "--out", str(out),
           *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert "failed: building" not in report, result.stderr[-3000:]
    return report, result.stdout


def table_row(report: str, label: str) -> list[str]:
    rows = [line for line in report.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, report
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_tiny_rows_of_ours_alone(tmp_path):
    report, _ = run_bench(tmp_path, "--domain", "sign", "--domain", "molecules")
    for domain in ("sign", "molecules"):
        cells = table_row(report, domain)
        assert cells[1] == "2" and cells[2].endswith("/ –")
        ours = [cells[i] for i in (3, 6, 9)]  # train samples/s, inference ms at batch 1 and B
        theirs = [cells[i] for i in (4, 5, 7, 8, 10, 11)]
        assert all(float(v) > 0 for v in ours) and set(theirs) == {"–"}
    assert "fp32 (the recipe's precision)" in report


def fake_result(**changes):
    result = {"domain": "relational", "config": "c", "batch": 4, "notes": [], "params_ours": 1000,
              "params_theirs": 1050, "train_ms": {"ours": 10.0, "theirs": 20.0},
              "infer_ms": {1: {"ours": 1.0, "theirs": 3.0}, 4: {"ours": 2.0, "theirs": 4.0}}, "failures": []}
    return result | changes


def test_compiled_rows_compare_compiled_peers_or_fall_back_to_their_eager_timing(bench):
    result = fake_result(compiled=True)
    result["train_ms"] |= {"ours compiled": 5.0, "theirs compiled": 10.0}
    result["infer_ms"][1] |= {"ours compiled": 0.5}  # the peer failed to compile its inference
    result["infer_ms"][4] |= {"ours compiled": 1.0, "theirs compiled": 2.0}
    eager, compiled = bench.row_cells(result)
    assert eager == ["relational", "4", "1.0 k / 1.1 k", "400.0", "200.0", "2.00", "1.00", "3.00", "3.00",
                     "2.00", "4.00", "2.00"]
    assert compiled == ["relational (compiled)", "4", "1.0 k / 1.1 k", "800.0", "400.0", "2.00", "0.50",
                        "3.00 (eager)", "6.00", "1.00", "2.00", "2.00"]


def test_rows_of_ours_alone_and_missing_timings(bench):
    result = fake_result(params_theirs=None, train_ms={"ours": 10.0}, infer_ms={4: {"ours": 2.0}})
    (row,) = bench.row_cells(result)
    assert row == ["relational", "4", "1.0 k / –", "400.0", "–", "–", "2.00", "–", "–", "2.00", "–", "–"]
    failed = fake_result(train_ms={"ours": 10.0}, failures=["relational: theirs, training step: E: no"])
    assert bench.row_cells(failed)[0][3:6] == ["400.0", "–", "–"]
    args = argparse.Namespace(iters=1, warmup=1)
    report = bench.render([failed], args, "python x", torch.device("cpu"))
    assert "- relational: theirs, training step: E: no" in report


def test_relational_inputs_give_both_models_the_same_masks(bench):
    """Their three masks (rt's materialized form, from their input) equal ours (from our input)."""
    from panformer.relational.model import RelationalTransformer

    cells = bench.relational_cells(3, cells=48, generator=torch.Generator().manual_seed(0))
    theirs = bench.rt_batch(cells, d_text=8, device=torch.device("cpu"))
    ours = bench.our_relational_batch(cells, torch.device("cpu"))
    node, f2p, col, table = (theirs[k].long() for k in ("node_idxs", "f2p_nbr_idxs", "col_name_idxs",
                                                        "table_name_idxs"))
    pad = ~theirs["is_padding"][:, :, None] & ~theirs["is_padding"][:, None, :]
    same_node = node[:, :, None] == node[:, None, :]
    kv_in_f2p = (node[:, None, :, None] == f2p[:, :, None, :]).any(-1)
    q_in_f2p = (node[:, :, None, None] == f2p[:, None, :, :]).any(-1)
    their_masks = {"feature": (same_node | kv_in_f2p) & pad, "neighbour": q_in_f2p & pad,
                   "column": (col[:, :, None] == col[:, None, :]) & (table[:, :, None] == table[:, None, :]) & pad}
    length = ours["kind"].shape[1]
    valid = ours["kind"] > 0
    our_masks = RelationalTransformer(dim=8, depth=1, num_heads=2, full_attention=False).masks(ours)
    for name, theirs_mask in their_masks.items():
        mine = our_masks[name].dense(length, length)[:, 0] & valid[:, :, None] & valid[:, None, :]
        assert torch.equal(mine, theirs_mask), name
    assert their_masks["neighbour"].any() and theirs["is_padding"].any()
    targets = theirs["is_targets"]
    assert torch.equal(targets, ours["masked"]) and (targets.sum(1) >= 1).all()
    assert not (targets & (theirs["sem_types"] == 1)).any()  # no text targets
    assert torch.equal(theirs["is_padding"], ~valid)


def peer_environment() -> dict[str, str] | None:
    """PYTHONPATH additions for the peer's einops (installed, or the wheel in .whl/), None when absent."""
    if importlib.util.find_spec("einops") is not None:
        return {}
    wheels = sorted((ROOT / ".whl").glob("einops-*.whl"))  # a pure-python wheel is importable as a zip
    if not wheels:
        return None
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(wheels[-1]), os.environ.get("PYTHONPATH")]))}


@pytest.mark.skipif(not RT_PEER.exists(), reason="no .peers/relational-transformer (see apps/bench/end_to_end.py)")
def test_tiny_relational_pair_against_the_peer(tmp_path):
    env = peer_environment()
    if env is None:
        pytest.skip("einops (the peer's dependency) is neither installed nor in .whl/")
    report, _ = run_bench(tmp_path, "--domain", "relational", "--peers", str(ROOT / ".peers"), env=env)
    cells = table_row(report, "relational")
    assert float(cells[3]) > 0  # our training step
    assert all(float(cells[i]) > 0 for i in (6, 7, 9, 10))  # inference, both models, batch 1 and B
    # FlexAttention has no backward on CPU: their training step fails there, and the report says so.
    assert cells[4] == "–" and "relational: theirs, training step: NotImplementedError" in report


def test_a_contender_that_fails_its_warm_up_is_left_out(bench):
    def broken() -> None:
        raise NotImplementedError("no backward here\nsecond line")

    failures: dict[str, str] = {}
    times = bench.time_round_robin({"ours": lambda: None, "theirs": broken}, device=torch.device("cpu"), warmup=0,
                                   iters=2, failures=failures)
    assert list(times) == ["ours"] and failures == {"theirs": "NotImplementedError: no backward here"}
    assert bench.time_round_robin({"theirs": broken}, device=torch.device("cpu"), warmup=1, iters=2,
                                  failures={}) == {}
    with pytest.raises(NotImplementedError):  # without `failures`, errors propagate
        bench.time_round_robin({"theirs": broken}, device=torch.device("cpu"), warmup=1, iters=1)


def test_kernels_are_sorted_into_kinds_by_name():
    sys.path.insert(0, str(BENCH.parent))
    try:
        from step_profile import category
    finally:
        sys.path.remove(str(BENCH.parent))
    assert category("flash_fwd_kernel<...>") == "attention"
    assert category("_forward_kernel_neighborhood") == "attention"
    assert category("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert category("nvjet_hsh_128x256") == "matmul"
    assert category("multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert category("vectorized_layer_norm_kernel") == "norm"
    assert category("elementwise_kernel<add>") == "other"


def test_profile_table_reports_each_contender_against_its_unprofiled_step(tmp_path):
    report, _ = run_bench(tmp_path, "--domain", "sign", "--profile", "2")
    rows = [line for line in report.splitlines() if line.startswith("| sign | ours |")]
    assert len(rows) == 1, report
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    (main,) = [line for line in report.splitlines() if line.startswith("| sign | 2 |")]  # batch 2
    samples_per_s = float(main.strip("|").split("|")[3])
    assert float(cells[2]) == pytest.approx(1000 * 2 / samples_per_s, rel=0.05)
    assert [float(c) for c in cells[3:]] == [0.0] * 8  # on the CPU: no kernels, no GPU time


def test_a_cuda_graph_row_compares_our_replayed_step_with_their_eager_step(bench):
    result = fake_result()
    result["train_ms"]["ours graphed"] = 4.0
    _, graphed = bench.row_cells(result)
    assert graphed[:6] == ["relational (ours: CUDA graph)", "4", "1.0 k / 1.1 k", "1000.0", "200.0", "5.00"]
    assert set(graphed[6:]) == {"–", "3.00", "4.00"} and graphed[6] == "–"  # no inference rows of its own
