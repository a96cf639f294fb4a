"""Neighbourhood attention on tokens in tile order: the ``TileLayout`` permutation, the tiled Triton
kernels (run by Triton's interpreter on CPU, TRITON_INTERPRET=1) and the ``tiled_neighborhood_attention``
op against the core's reference oracle with a ``Neighborhood`` mask, values and gradients in fp32."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from panformer_kernels.neighborhood_attention import as_three_axes, neighborhood_attention
from panformer_kernels.tile_layout import TileLayout
from shared_attention import Neighborhood
from shared_attention.backends.reference import reference_attention
from shared_attention.neighborhood import tiled_neighborhood_attention

from .conftest import (
    assert_close,
    assert_low_precision_matches,
    qkv,
    run_in_interpreter,
    values_and_grads,
)
from .hopper import compile_neighborhood_kernels_for_hopper

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (grid, kernel size, dilation, causal, stride, heads, kv heads, head dim, layout tile, own block, walked block)
CASES = [
    ((12, 12), 9, 1, False, 1, 2, 1, 16, (4, 4), (1, 4, 4), (1, 4, 4)),  # centre blocks fully visible
    ((11, 13), (5, 3), (2, 1), False, 1, 2, 1, 12, (4, 8), (1, 2, 8), (1, 4, 8)),  # ragged, dilated, D=12
    ((64,), 33, 1, False, 1, 2, 2, 16, (16,), (1, 1, 16), (1, 1, 16)),  # 1-D, interior blocks fully visible
    ((40,), 7, 2, False, 1, 2, 1, 16, (32,), (1, 1, 32), (1, 1, 16)),  # 1-D, dilated, padded
    ((7, 10), (4, 3), 1, (True, False), (3, 3), 2, 2, 16, (4, 4), (1, 4, 4), (1, 4, 4)),  # causal rows, strided
    ((4, 4, 6), 3, (1, 1, 2), (True, False, False), 1, 2, 1, 16, (2, 2, 4), (2, 2, 4), (2, 2, 4)),  # 3-D causal time
    ((4, 5, 6), 3, 1, False, (1, 2, 3), 1, 1, 16, (1, 4, 4), (1, 4, 4), (1, 4, 4)),  # 3-D strided (GNA)
]


def block_pairs(mask: Neighborhood, layout: TileLayout, own: tuple, walk: tuple) -> tuple[int, int]:
    """(fully visible, partly visible) pairs of an own block of queries and a walked block of keys, from the
    dense mask in tile order: a case's blocks should take both of the kernels' paths."""
    index = layout.raster_index()
    real = index >= 0
    dense = mask.dense(mask.num_tokens, mask.num_tokens)[0, 0][index.clamp(min=0)][:, index.clamp(min=0)]
    dense = dense & real[:, None] & real[None, :]
    q_size, k_size = math.prod(own), math.prod(walk)
    blocks = dense.view(layout.length // q_size, q_size, layout.length // k_size, k_size).transpose(1, 2)
    seen = blocks.flatten(2)
    return int(seen.all(-1).sum()), int((seen.any(-1) & ~seen.all(-1)).sum())


def check_tiled_kernels(grid, kernel_size, dilation, causal, stride, heads, kv_heads, dim, tile, own, walk) -> None:
    """The tiled Triton forward and backward (an lse gradient too) against the oracle; raises on mismatch."""
    from panformer_kernels.triton_tiled_neighborhood_attention import (
        tiled_neighborhood_backward,
        tiled_neighborhood_forward,
    )

    length = math.prod(grid)
    q, k, v = qkv(1, heads, kv_heads, length, length, dim, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation, causal, stride)
    layout = TileLayout(grid, tile, dilation)
    ref_out, ref_lse = reference_attention(q, k, v, mask=mask, return_lse=True)
    weight = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(7))
    lse_weight = torch.randn(ref_lse.shape, generator=torch.Generator().manual_seed(8))
    wanted = torch.autograd.grad((ref_out * weight).sum() + (ref_lse * lse_weight).sum(), (q, k, v))

    _, kernel3, _, causal3, stride3 = as_three_axes(grid, kernel_size, dilation, causal, stride)
    options = dict(layout=layout, kernel_size=tuple(kernel3), causal=tuple(causal3), stride=tuple(stride3),
                   scale=dim**-0.5, config=dict(block=own, walk=walk, num_warps=4, num_stages=1))
    tiles = lambda t: layout.to_tiles(t.detach())  # noqa: E731
    lse_tiles = lambda t: layout.to_tiles(t[..., None])[..., 0]  # noqa: E731
    out, lse = tiled_neighborhood_forward(tiles(q), tiles(k), tiles(v), **options)
    assert_close(layout.from_tiles(out), ref_out.detach())
    assert_close(lse, lse_tiles(ref_lse.detach()))  # padding positions: 0
    assert not out[..., ~layout.valid(), :].any()
    grads = tiled_neighborhood_backward(tiles(weight), tiles(q), tiles(k), tiles(v), out, lse, **options,
                                        grad_lse=lse_tiles(lse_weight))
    for actual, expected in zip(grads, wanted, strict=True):
        assert_close(actual, tiles(expected))  # padding positions: 0


def test_tiled_kernels_match_the_oracle_in_the_interpreter():
    run_in_interpreter(__name__, expected_ok=len(CASES), timeout=300)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}")
def test_cases_take_both_kernel_paths(case):
    grid, kernel_size, dilation, causal, stride, *_, tile, own, walk = case
    full, partial = block_pairs(Neighborhood(grid, kernel_size, dilation, causal, stride),
                                TileLayout(grid, tile, dilation), own, walk)
    assert partial > 0
    if case in CASES[:1] + CASES[2:3]:  # windows much larger than the blocks
        assert full > 0


@pytest.mark.parametrize(
    ("grid", "tile", "dilation"),
    [((10,), (4,), 3), ((7, 9), (4, 2), (2, 1)), ((5, 6, 7), (2, 2, 4), (1, 2, 3)), ((8, 16), (8, 16), 1)],
)
def test_layout_round_trip_and_tiles_are_contiguous_boxes(grid, tile, dilation):
    layout = TileLayout(grid, tile, dilation)
    for shape in ((2, 3, layout.num_tokens, 5), (2, layout.num_tokens, 7)):  # (B, H, L, D) and (B, L, C)
        x = torch.randn(shape)
        tiled = layout.to_tiles(x)
        assert tiled.shape[-2] == layout.length
        assert torch.equal(layout.from_tiles(tiled), x)
        assert not tiled[..., ~layout.valid(), :].any()  # padding positions are zeros
    # Each tile is one run of prod(tile) tokens: the cells of one dilation group, a box in its sub-grid.
    index = layout.raster_index()
    assert int(layout.valid().sum()) == layout.num_tokens
    assert sorted(index[index >= 0].tolist()) == list(range(layout.num_tokens))
    size = math.prod(tile)
    coords = torch.stack(torch.unravel_index(index.clamp(min=0), layout.grid), -1)  # (Lp, axes)
    dilations = torch.tensor(layout.dilation)
    for run, real in zip(coords.view(-1, size, len(grid)), (index >= 0).view(-1, size), strict=True):
        cells = run[real]
        if len(cells):
            assert (cells % dilations == cells[0] % dilations).all()  # one dilation group
            extent = (cells.max(0).values - cells.min(0).values) // dilations + 1
            assert (extent <= torch.tensor(tile)).all()


def test_layout_rejects_bad_options():
    with pytest.raises(ValueError, match="powers of two"):
        TileLayout((8, 8), (3, 8))
    with pytest.raises(ValueError, match="one tile size"):
        TileLayout((8, 8), (8,))
    with pytest.raises(ValueError, match="to_tiles wants"):
        TileLayout((8, 8), (4, 4)).to_tiles(torch.zeros(1, 63, 4))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}")
def test_op_cpu_path_matches_the_oracle(case):
    grid, kernel_size, dilation, causal, stride, heads, kv_heads, dim, tile, *_ = case
    layout = TileLayout(grid, tile, dilation)
    length = math.prod(grid)
    q, k, v = qkv(2, heads, kv_heads, length, length, dim, requires_grad=True)
    mask = Neighborhood(grid, kernel_size, dilation, causal, stride)
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)

    def tiled(*t):  # a model that keeps tile order: in once, out once
        out = tiled_neighborhood_attention(*(layout.to_tiles(x) for x in t), layout, kernel_size, stride, causal)
        return layout.from_tiles(out)

    def raster(*t):  # the raster entry permuting around the tiled op
        return neighborhood_attention(*t, grid=grid, kernel_size=kernel_size, dilation=dilation, causal=causal,
                                      stride=stride, tiled=True)

    for fn in (tiled, raster):
        actual, grads = values_and_grads(fn, q, k, v)
        assert_close(actual, expected)
        for a, b in zip(grads, expected_grads, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize(
    "grid, tile, dilation",
    [((256,), (64,), 1), ((250,), (64,), 1), ((256,), (64,), 2), ((16, 8), (8, 8), 1), ((8, 16), (8, 8), 1),
     ((16, 16), (8, 8), 1), ((3, 8, 8), (1, 8, 8), 1), ((3, 16, 8), (2, 8, 8), 1), ((4, 1, 8), (1, 1, 8), 1)],
)
def test_raster_order_is_recognised_exactly_when_the_permutation_is_the_identity(grid, tile, dilation):
    layout = TileLayout(grid, tile, dilation)
    identity = layout.length == layout.num_tokens and bool(
        (layout.raster_index() == torch.arange(layout.num_tokens)).all())
    assert layout.is_raster_order == identity


def test_raster_grids_already_in_tile_order_run_the_tiled_op_unpermuted():
    """A 1-D grid of whole tiles goes to the tiled op as it is (its faster kernel), with the same values."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    mask = Neighborhood((128,), 15)
    q, k, v = qkv(1, 2, 1, 128, 128, 8)
    with Ops() as ops:
        out = neighborhood_attention(q, k, v, grid=(128,), kernel_size=15)
    assert any("tiled_neighborhood_attention" in name for name in ops.seen), ops.seen
    assert_close(out, reference_attention(q, k, v, mask=mask))
    with Ops() as ops:  # padded to whole tiles: the raster kernel
        neighborhood_attention(*qkv(1, 2, 1, 120, 120, 8), grid=(120,), kernel_size=15)
    assert not any("tiled" in name for name in ops.seen)


def test_tiled_entry_rejects_raster_tensors():
    layout = TileLayout((7, 9), (4, 4))
    q, k, v = qkv(1, 2, 2, 63, 63, 8)
    with pytest.raises(ValueError, match=r"layout\.to_tiles"):
        tiled_neighborhood_attention(q, k, v, layout, 3)
    q, k, v = (layout.to_tiles(t) for t in (q, k, v))
    with pytest.raises(ValueError, match="must fit the grid"):
        tiled_neighborhood_attention(q, k, v, layout, 9)


def test_tiled_op_passes_opcheck():
    layout = TileLayout((4, 5), (4, 4), (1, 2))
    q, k, v = (layout.to_tiles(t).detach().requires_grad_() for t in qkv(1, 2, 1, 20, 20, 8))
    torch.library.opcheck(
        torch.ops.panformer.tiled_neighborhood_attention.default,
        (q, k, v, [1, 4, 5], [1, 4, 4], [1, 3, 2], [1, 1, 2], [False, True, False], [1, 2, 1], 0.3),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_tiled_kernels_compile_for_hopper_without_a_gpu():
    """Triton lowers the three tiled kernels to a cubin for sm_90 (bf16, 8 x 8 tiles walked in 4 x 8 blocks,
    causal rows, D=64): what the interpreter cannot check (types, layouts, the masked branch) compiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    from panformer_kernels import triton_tiled_neighborhood_attention as kernels

    meta = {"TILE_T": 1, "TILE_H": 8, "TILE_W": 8, "OWN_T": 1, "OWN_H": 8, "OWN_W": 8, "WALK_T": 1, "WALK_H": 4,
            "WALK_W": 8, "BLOCK_D": 64, "EVEN_D": True, "PRECISION": "tf32", "CAUSAL_T": False, "CAUSAL_H": True,
            "CAUSAL_W": False, "THREE_D": False}
    compile_neighborhood_kernels_for_hopper(kernels, meta)


@pytest.mark.slow
def test_bench_smoke_mode_records_failures_and_writes_the_tables(tmp_path):
    """apps/bench/tiled_na.py --smoke (CPU, interpreter) runs end to end: every contender's cell filled, Flex's
    missing CPU backward recorded as a failure while the run goes on, and the sweep's rows written."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "tiled.md"
    cmd = [sys.executable, str(root / "apps/bench/tiled_na.py"), "--smoke", "--sweep", "--only", "1-D", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1-D")]
    assert len(rows) == 4, rows  # fwd, fwd+bwd, and the sweep's fwd and bwd entries
    assert "failed (ValueError" in rows[1] and "failed" not in rows[0]
    for row in rows:
        times = [float(c.split()[0]) for c in row.strip("|").split("|") if c.strip().endswith("(0)")]
        assert times and all(t > 0 for t in times), row


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "mask",
    [
        Neighborhood((64, 64), 15),  # whole tiles, centre blocks unmasked
        Neighborhood((24, 20), 7, (1, 2)),  # ragged against (8, 16) tiles, dilated
        Neighborhood((6, 16, 16), (3, 7, 7), causal=(True, False, False)),  # 3-D, causal time
        Neighborhood((1000,), 127, stride=4),  # 1-D, strided, padded
    ],
    ids=["2d", "2d-dilated", "3d-causal", "1d-strided"],
)
def test_cuda_tiled_kernel_matches_the_oracle(dtype, mask):
    length = math.prod(mask.grid)
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv(2, 4, 2, length, length, 128, device="cuda"))
    expected, expected_grads = values_and_grads(lambda *t: reference_attention(*t, mask=mask), q, k, v)
    actual, grads = values_and_grads(
        lambda *t: neighborhood_attention(*t, grid=mask.grid, kernel_size=mask.kernel_size, dilation=mask.dilation,
                                          causal=mask.causal, stride=mask.stride, tiled=True), q, k, v)
    if dtype == torch.bfloat16:  # against fp32, as accurate as plain bf16 attention
        assert_low_precision_matches(actual, grads, q, k, v, mask)
        return
    assert_close(actual, expected, atol=1e-4, rtol=1e-3)
    for a, b in zip(grads, expected_grads, strict=True):
        assert_close(a, b, atol=1e-4, rtol=1e-3)


if __name__ == "__main__":  # run by the interpreter test above, in its own process
    assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"
    torch.manual_seed(0)
    for case in CASES:
        check_tiled_kernels(*case)
        print("ok", case, flush=True)
