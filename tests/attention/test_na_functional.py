"""``na1d`` / ``na2d`` / ``na3d`` and the core's strided ``Neighborhood`` with additional keys, against our own
oracle (the reference backend on a mask built by hand): values, log-sum-exp and gradients, torch.compile,
dispatch routing, the ``Attention`` module's additional tokens, and the one-line errors on bad input.
(NATTEN itself is the oracle in test_natten.py.)"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import pytest
import torch

from shared_attention import Attention, Neighborhood, attention, merge_attentions, na1d, na2d, na3d
from shared_attention.backends.reference import reference_attention
from shared_attention.dispatch import explain
from shared_attention.functional import make_case
from shared_attention.masks import Dense

from .conftest import assert_close


def window(n: int, k: int, d: int, s: int, causal: bool, i: int) -> set[int]:
    """Keys along one axis that index i sees: its dilation group's cells, runs of s sharing their leader's
    window (the middle cell, the last one if causal, cut at the border), shifted inside the group."""
    group = [x for x in range(n) if x % d == i % d]
    pos = group.index(i)
    leader = min(pos // s * s + (s - 1 if causal else s // 2), len(group) - 1)
    if causal:
        return set(group[max(0, leader - k + 1) : pos + 1])
    start = max(0, min(leader - k // 2, len(group) - k))
    return set(group[start : start + k])


def hand_mask(grid, kernel, dilation, stride, causal, extra: int) -> torch.Tensor:
    """bool (1, 1, L, L + N) built cell by cell from ``window``."""
    coords = [tuple(int(c) for c in torch.unravel_index(torch.tensor(i), grid)) for i in range(math.prod(grid))]
    allowed = torch.zeros(1, 1, len(coords), len(coords) + extra, dtype=torch.bool)
    for i, qc in enumerate(coords):
        for j, kc in enumerate(coords):
            allowed[0, 0, i, j] = all(
                kc[a] in window(grid[a], kernel[a], dilation[a], stride[a], causal[a], qc[a]) for a in range(len(grid))
            )
    allowed[..., len(coords) :] = True
    return allowed


CASES = [  # grid, kernel, dilation, stride, causal, extra tokens, heads, kv heads
    ((13,), (5,), (2,), (3,), (False,), 0, 2, 1),
    ((6, 9), (3, 4), (1, 2), (2, 4), (False, False), 2, 2, 2),
    ((7, 5), (4, 3), (1, 1), (3, 2), (True, False), 0, 4, 2),
    ((3, 4, 5), (2, 3, 3), (1, 1, 1), (2, 1, 3), (True, False, False), 3, 2, 1),
]
NA = {1: na1d, 2: na2d, 3: na3d}


def inputs(grid, heads, kv_heads, extra, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, *grid, heads, 8, generator=g).requires_grad_(True)
    k, v = (torch.randn(2, *grid, kv_heads, 8, generator=g).requires_grad_(True) for _ in range(2))
    more = {}
    if extra:
        more = {name: torch.randn(2, extra, kv_heads, 8, generator=g).requires_grad_(True)
                for name in ("additional_keys", "additional_values")}
    return q, k, v, more


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0])}d-{c[0]}")
@pytest.mark.parametrize("backend", ["auto", "neighborhood"])
def test_values_lse_and_gradients_match_the_hand_built_oracle(case, backend):
    grid, kernel, dilation, stride, causal, extra, heads, kv_heads = case
    q, k, v, more = inputs(grid, heads, kv_heads, extra)
    leaves = (q, k, v, *more.values())
    out, lse = NA[len(grid)](q, k, v, kernel, stride, dilation, causal, 0.3, **more, return_lse=True, backend=backend)

    batch = q.shape[0]
    first = lambda t: t.reshape(batch, -1, t.shape[-2], t.shape[-1]).transpose(1, 2)  # noqa: E731
    keys = torch.cat([first(k), *([first(more["additional_keys"])] if extra else [])], 2)
    values = torch.cat([first(v), *([first(more["additional_values"])] if extra else [])], 2)
    mask = Dense(hand_mask(grid, kernel, dilation, stride, causal, extra))
    want_out, want_lse = reference_attention(first(q), keys, values, mask=mask, scale=0.3, return_lse=True)
    want_out = want_out.transpose(1, 2).reshape(out.shape)
    want_lse = want_lse.transpose(1, 2).reshape(lse.shape)
    assert out.shape == (batch, *grid, heads, 8) and lse.shape == (batch, *grid, heads)
    assert_close(out, want_out)
    assert_close(lse, want_lse)
    g = torch.Generator().manual_seed(5)
    w_out, w_lse = torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)
    grads = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), leaves)
    wanted = torch.autograd.grad((want_out * w_out).sum() + (want_lse * w_lse).sum(), leaves)
    for a, b in zip(grads, wanted, strict=True):
        assert_close(a, b)


def test_traces_under_torch_compile_with_gradients():
    q, k, v, more = inputs((6, 7), 2, 1, 2)
    options = dict(kernel_size=(3, 5), stride=(2, 3), is_causal=(True, False), **more)
    compiled = torch.compile(na2d, backend="aot_eager", fullgraph=False)
    expected = na2d(q, k, v, **options)
    actual = compiled(q, k, v, **options)
    assert_close(actual, expected)
    grads = torch.autograd.grad(actual.sum(), (q, k, v))
    wanted = torch.autograd.grad(expected.sum(), (q, k, v))
    for a, b in zip(grads, wanted, strict=True):
        assert_close(a, b)


def test_dispatch_sends_stride_and_additional_keys_to_the_kernel_on_cuda():
    q = torch.randn(1, 2, 64, 16)
    strided = Neighborhood((8, 8), 4, stride=2)
    case = replace(make_case(q, q, q, mask=strided), device_type="cuda")
    assert explain(case).chosen == "neighborhood"
    # A grid long enough for Flex to beat SDPA's dense mask (4096 tokens, 7x7 windows), plus 4 registers.
    with_extra = Neighborhood((64, 64), 7, additional_keys=4)
    grid_q, extra_k = torch.randn(1, 2, 4096, 16), torch.randn(1, 2, 4100, 16)
    why = explain(replace(make_case(grid_q, extra_k, extra_k, mask=with_extra), device_type="cuda"))
    assert why.chosen == "neighborhood"  # the window on the kernel, the registers beside it, merged
    # The log-sum-exp has its own op (SDPA cannot return it): on CPU in training, the op's reference path.
    lse_case = replace(make_case(q, q, q, mask=strided, op="softmax_lse"), training=True)
    assert explain(lse_case).chosen == "neighborhood" and "sdpa" not in explain(lse_case).rejected


def test_attention_module_takes_additional_tokens_as_natten_does():
    torch.manual_seed(0)
    layer = Attention(32, 4, num_kv_heads=2).eval()
    x, registers = torch.randn(2, 20, 32), torch.randn(2, 3, 32)
    mask = Neighborhood((4, 5), 3, stride=(1, 2), additional_keys=3)
    out = layer(x, mask=mask, additional_tokens=registers)
    q = layer.q_proj(x).view(2, 4, 5, 4, 8)
    k, v = layer.kv_proj(x).view(2, 4, 5, 2, 2, 8).unbind(3)
    extra_k, extra_v = layer.kv_proj(registers).view(2, 3, 2, 2, 8).unbind(2)
    expected = na2d(q, k, v, 3, stride=(1, 2), additional_keys=extra_k, additional_values=extra_v)
    assert_close(out, layer.out_proj(expected.reshape(2, 20, 32)))
    with pytest.raises(ValueError, match=r"wants 20 queries and 20 keys, got 20 queries and 23 keys"):
        layer(x, mask=Neighborhood((4, 5), 3), additional_tokens=registers, backend="reference")


def test_attention_returns_the_log_sum_exp_of_every_backend_alike():
    q, k, v = (torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mask = Neighborhood((8, 8), 5, stride=(2, 3))
    want_out, want_lse = attention(q, k, v, mask=mask, backend="reference", return_lse=True)
    out, lse = attention(q, k, v, mask=mask, backend="neighborhood", return_lse=True)
    assert_close(out, want_out)
    assert_close(lse, want_lse)
    for backend in ("sdpa", "flex"):  # neither returns it here (Flex does on CUDA)
        with pytest.raises(ValueError, match=f"{backend}"):
            attention(q, k, v, mask=mask, backend=backend, return_lse=True)


BAD = [  # (what, call arguments, the words the one-line error must hold)
    ("window larger than the grid", dict(kernel_size=(3, 4), dilation=(1, 2)), ["kernel_size x dilation", "(6, 7)"]),
    ("stride larger than the kernel", dict(kernel_size=3, stride=(1, 4)), ["stride=(1, 4)", "kernel_size=(3, 3)"]),
    ("per-axis option of the wrong length", dict(kernel_size=(3, 3, 3)), ["kernel_size=(3, 3, 3)", "per grid axis"]),
]


@pytest.mark.parametrize(("what", "options", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_options_raise_one_line_value_errors(what, options, words):
    q = torch.randn(1, 6, 7, 2, 8)
    with pytest.raises(ValueError) as error:
        na2d(q, q, q, **options)
    message = str(error.value)
    assert "\n" not in message and message.startswith("na2d:")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("what", "shapes", "words"),
    [
        ("layout not matching the grid", ((1, 6, 7, 2, 8), (1, 6, 6, 2, 8)), ["key (1, 6, 6, 2, 8)", "(1, 6, 7)"]),
        ("heads not dividing", ((1, 6, 7, 3, 8), (1, 6, 7, 2, 8)), ["heads 2", "query heads 3"]),
        ("a 1-D tensor to na2d", ((1, 42, 2, 8), (1, 42, 2, 8)), ["query must be 5-D [B, X, Y, H, D]", "(1, 42, 2, 8)"]),
    ],
)
def test_bad_shapes_raise_one_line_value_errors(what, shapes, words):
    q, k = torch.randn(shapes[0]), torch.randn(shapes[1])
    with pytest.raises(ValueError) as error:
        na2d(q, k, k, 3)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_additional_tokens_of_the_wrong_shape_are_named():
    q = torch.randn(1, 6, 7, 2, 8)
    with pytest.raises(ValueError, match=r"additional_keys/values must be \[B, N, Hkv, D\]"):
        na2d(q, q, q, 3, additional_keys=torch.randn(1, 4, 1, 8), additional_values=torch.randn(1, 4, 1, 8))
    with pytest.raises(ValueError, match="together"):
        na2d(q, q, q, 3, additional_keys=torch.randn(1, 4, 2, 8))


def test_merge_attentions_equals_one_softmax_over_all_keys():
    """Two disjoint key sets attended apart and merged = attending their union at once (values and
    gradients); a part with no allowed key (lse -inf) weighs nothing, a row with none anywhere gives 0."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 8, generator=g).requires_grad_(True)
    k, v = (torch.randn(2, 3, 9, 8, generator=g).requires_grad_(True) for _ in range(2))
    allowed = torch.rand(5, 9, generator=g) > 0.4
    allowed[0, :4] = False  # row 0: nothing in the first part
    allowed[1] = False  # row 1: no key at all
    parts = [reference_attention(q, k[:, :, s], v[:, :, s], mask=Dense(allowed[None, None, :, s]), return_lse=True)
             for s in (slice(0, 4), slice(4, 9))]
    out, lse = merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    want_out, want_lse = reference_attention(q, k, v, mask=Dense(allowed[None, None]), return_lse=True)
    assert_close(out, want_out)
    assert_close(lse, want_lse)
    assert (out[:, :, 1] == 0).all() and torch.isneginf(lse[:, :, 1]).all()
    keep = torch.ones(5, dtype=torch.bool)
    keep[1] = False  # the empty row's lse is -inf on both sides: compare gradients through the others
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum() + lse[:, :, keep].sum(), (q, k, v))
    wanted = torch.autograd.grad((want_out * w).sum() + want_lse[:, :, keep].sum(), (q, k, v))
    for a, b in zip(grads, wanted, strict=True):
        assert torch.isfinite(a).all()
        assert_close(a, b)
    with pytest.raises(ValueError, match="one log-sum-exp per output"):
        merge_attentions([out], [])


@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))), reason="Inductor needs a C++ compiler on CPU")
def test_additional_keys_on_the_neighbourhood_op_compile_with_inductor():
    """The window on the op, the extra keys beside it, merged: Inductor's values and gradients equal eager
    (a stacked logsumexp in the merge once compiled to a wrong gradient on CPU)."""
    q, k, v, more = inputs((6, 7), 2, 1, 3)
    options = dict(kernel_size=(3, 5), stride=(2, 3), is_causal=(True, False), backend="neighborhood", **more)
    leaves = (q, k, v, *more.values())
    expected = na2d(q, k, v, **options)
    actual = torch.compile(na2d, backend="inductor")(q, k, v, **options)
    assert_close(actual, expected)
    grads = torch.autograd.grad(actual.square().sum(), leaves)
    wanted = torch.autograd.grad(expected.square().sum(), leaves)
    for a, b in zip(grads, wanted, strict=True):
        assert_close(a, b)
