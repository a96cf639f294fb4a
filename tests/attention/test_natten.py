"""``na1d`` / ``na2d`` / ``na3d`` against NATTEN 0.21.7 itself (its ``flex-fna`` backend, forward, on CPU):
values and log-sum-exp on random shapes (non-square grids, borders, stride, dilation, causal axes,
additional tokens, grouped-query heads), and our gradients against a dense softmax over the attention
pattern NATTEN produces. Skipped when natten is not installed (a test-only dependency)."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from shared_attention import na1d, na2d, na3d

from .conftest import assert_close

natten = pytest.importorskip("natten")

OURS = {1: na1d, 2: na2d, 3: na3d}


def random_case(rng: random.Random, axes: int) -> dict:
    """A random NATTEN call: grid sides 2-9 (3-D: 2-5), kernel x dilation within each side, stride up to the
    kernel, causal axes, 0-3 additional tokens, 1-2 key/value heads shared by 1-2 query heads each."""
    grid, kernel, dilation, stride, causal = [], [], [], [], []
    for _ in range(axes):
        n = rng.randint(2, 9 if axes < 3 else 5)
        d = rng.choice([1, 1, 2]) if n >= 4 else 1
        k = rng.randint(2, n // d)  # NATTEN takes kernel sizes from 2
        grid.append(n), dilation.append(d), kernel.append(k)
        stride.append(rng.randint(1, k)), causal.append(rng.random() < 0.3)
    kv_heads = rng.randint(1, 2)
    return dict(
        grid=tuple(grid), kernel_size=tuple(kernel), stride=tuple(stride), dilation=tuple(dilation),
        is_causal=tuple(causal), heads=kv_heads * rng.randint(1, 2), kv_heads=kv_heads, extra=rng.randint(0, 3),
    )


CASES = [random_case(random.Random(seed), axes) for axes in (1, 2, 3) for seed in range(6)]
CASES += [  # named corners: blocked (Swin) windows, even strides cut by the border, causal with stride
    dict(grid=(8, 12), kernel_size=(4, 4), stride=(4, 4), dilation=1, is_causal=False, heads=2, kv_heads=1, extra=0),
    dict(grid=(7, 10), kernel_size=(5, 4), stride=(2, 4), dilation=(1, 2), is_causal=(True, False), heads=2,
         kv_heads=2, extra=4),
    dict(grid=(5, 6, 7), kernel_size=(3, 3, 3), stride=(3, 2, 1), dilation=(1, 2, 2), is_causal=(True, False, True),
         heads=4, kv_heads=1, extra=2),
]


def tensors(case: dict, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, grid = 2, case["grid"]
    q = torch.randn(batch, *grid, case["heads"], dim, generator=g)
    k, v = (torch.randn(batch, *grid, case["kv_heads"], dim, generator=g) for _ in range(2))
    extra = {}
    if case["extra"]:
        extra = dict(zip(("additional_keys", "additional_values"),
                         (torch.randn(batch, case["extra"], case["kv_heads"], dim, generator=g) for _ in range(2)),
                         strict=True))
    return q, k, v, extra


def options(case: dict) -> dict:
    return {name: case[name] for name in ("kernel_size", "stride", "dilation", "is_causal")}


def natten_forward(q, k, v, case, **extra):
    with warnings.catch_warnings():  # NATTEN's eager Flex warns that it is not compiled
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return getattr(natten, f"na{len(case['grid'])}d")(
                q, k, v, **options(case), **extra, backend="flex-fna", return_lse=True
            )


def case_id(case: dict) -> str:
    return "-".join(f"{v}" for v in (case["grid"], case["kernel_size"], case["stride"], case["extra"])).replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_values_and_lse_match_natten(case):
    q, k, v, extra = tensors(case)
    expected, expected_lse = natten_forward(q, k, v, case, **extra)
    out, lse = OURS[len(case["grid"])](q, k, v, **options(case), **extra, return_lse=True)
    assert out.shape == expected.shape and lse.shape == expected_lse.shape
    assert_close(out, expected, atol=2e-6, rtol=1e-5)
    assert_close(lse, expected_lse, atol=2e-6, rtol=1e-5)


def natten_pattern(case: dict) -> torch.Tensor:
    """bool (L, L + N): which keys (the grid's, then the additional ones) NATTEN lets each query attend, read
    off its output: equal scores (zero queries and keys) and one-hot values give 1/count on each attended key."""
    grid, extra = case["grid"], case["extra"]
    length = math.prod(grid)
    width = max(16, 1 << (length + extra - 1).bit_length())  # NATTEN's Flex: a power-of-two head dim
    q = torch.zeros(1, *grid, 1, width)
    eye = torch.eye(length + extra, width)
    v = eye[:length].reshape(1, *grid, 1, width)
    more = {}
    if extra:
        more = dict(additional_keys=torch.zeros(1, extra, 1, width), additional_values=eye[length:][None, :, None])
    case = {**case, "heads": 1}
    out, _ = natten_forward(q, torch.zeros_like(q), v, case, **more)
    return out.reshape(length, width)[:, : length + extra] > 0


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
@pytest.mark.parametrize("backend", ["auto", "neighborhood", "reference"])
def test_gradients_match_a_dense_softmax_on_natten_pattern(case, backend):
    q, k, v, extra = tensors(case, seed=1)
    inputs = [t.requires_grad_(True) for t in (q, k, v, *extra.values())]
    length, batch, heads = math.prod(case["grid"]), q.shape[0], q.shape[-2]
    allowed = natten_pattern(case)
    out, lse = OURS[len(case["grid"])](q, k, v, **options(case), **extra, return_lse=True, backend=backend)
    g = torch.Generator().manual_seed(3)
    w_out, w_lse = torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)
    grads = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), inputs)

    # The oracle: dense softmax over NATTEN's pattern, (B, H, L, L + N), key/value heads repeated.
    def heads_first(t, n):
        return t.reshape(batch, n, t.shape[-2], -1).transpose(1, 2).repeat_interleave(heads // t.shape[-2], 1)

    keys = torch.cat([heads_first(k, length), *([heads_first(extra["additional_keys"], case["extra"])] if extra else [])], 2)
    values = torch.cat([heads_first(v, length), *([heads_first(extra["additional_values"], case["extra"])] if extra else [])], 2)
    scores = (heads_first(q, length) @ keys.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    dense_lse = scores.logsumexp(-1)
    dense_out = scores.softmax(-1) @ values
    dense_out = dense_out.transpose(1, 2).reshape(out.shape)
    dense_lse = dense_lse.transpose(1, 2).reshape(lse.shape)
    assert_close(out.detach(), dense_out.detach())
    expected = torch.autograd.grad((dense_out * w_out).sum() + (dense_lse * w_lse).sum(), inputs)
    for actual, wanted in zip(grads, expected, strict=True):
        assert_close(actual, wanted)
