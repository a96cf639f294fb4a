"""Masks: each dense form against a brute-force Python definition, and the Flex mask_mod
(evaluated per pair under vmap, as FlexAttention does) against the dense form."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_attention.masks import (
    Causal,
    Chunked,
    Dense,
    Document,
    EdgeIndex,
    ForeignKey,
    KeyPadding,
    Neighborhood,
    SameColumn,
    SameRow,
    SameValue,
    SlidingWindow,
)

SETTINGS = settings(max_examples=25, deadline=None)


def brute(batch: int, q_len: int, kv_len: int, rule) -> torch.Tensor:
    """(B, 1, Lq, Lk) bool from a per-pair Python rule(b, query_position, key_position)."""
    out = torch.zeros(batch, 1, q_len, kv_len, dtype=torch.bool)
    shift = kv_len - q_len
    for b, i, j in itertools.product(range(batch), range(q_len), range(kv_len)):
        out[b, 0, i, j] = bool(rule(b, i + shift, j))
    return out


def via_mask_mod(mask, batch: int, q_len: int, kv_len: int) -> torch.Tensor:
    """The Flex lowering evaluated on every (b, q, kv) with vmap, one pair at a time."""
    fn = mask.mask_mod(q_len, kv_len)
    fn = torch.vmap(fn, in_dims=(None, None, None, 0))
    fn = torch.vmap(fn, in_dims=(None, None, 0, None))
    fn = torch.vmap(fn, in_dims=(0, None, None, None))
    out = fn(torch.arange(batch), torch.tensor(0), torch.arange(q_len), torch.arange(kv_len))
    return out[:, None]


def check(mask, expected: torch.Tensor) -> None:
    batch, _, q_len, kv_len = expected.shape
    dense = mask.dense(q_len, kv_len, device="cpu").expand(batch, 1, q_len, kv_len)
    assert torch.equal(dense, expected)
    assert torch.equal(via_mask_mod(mask, batch, q_len, kv_len), expected)


lengths = st.integers(1, 12)


@SETTINGS
@given(q_len=lengths, extra=st.integers(0, 5))
def test_causal_aligns_queries_to_the_end(q_len, extra):
    kv_len = q_len + extra
    check(Causal(), brute(1, q_len, kv_len, lambda b, i, j: j <= i))
    assert Causal().sdpa_causal(q_len, kv_len) == (extra == 0)


@SETTINGS
@given(length=lengths, window=st.integers(1, 8), causal=st.booleans())
def test_sliding_window(length, window, causal):
    if causal:
        rule = lambda b, i, j: 0 <= i - j < window  # noqa: E731
    else:
        rule = lambda b, i, j: abs(i - j) <= window // 2  # noqa: E731
    check(SlidingWindow(window, causal=causal), brute(1, length, length, rule))


@SETTINGS
@given(length=lengths, chunk=st.integers(1, 5), causal=st.booleans())
def test_chunked(length, chunk, causal):
    check(
        Chunked(chunk, causal=causal),
        brute(
            1, length, length, lambda b, i, j: i // chunk == j // chunk and (j <= i or not causal)
        ),
    )


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 3), length=lengths)
def test_key_padding_valid_and_lengths(data, batch, length):
    n = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    expected = brute(batch, length, length, lambda b, i, j: j < n[b])
    check(KeyPadding(lengths=torch.tensor(n)), expected)
    valid = torch.arange(length)[None] < torch.tensor(n)[:, None]
    check(KeyPadding(valid=valid), expected)


def test_key_padding_rejects_ambiguous_input():
    with pytest.raises(ValueError):
        KeyPadding()
    with pytest.raises(TypeError):
        KeyPadding(valid=torch.ones(1, 3))


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 3), length=lengths, causal=st.booleans())
def test_document(data, batch, length, causal):
    ids = torch.tensor(
        [
            sorted(data.draw(st.lists(st.integers(0, 3), min_size=length, max_size=length)))
            for _ in range(batch)
        ]
    )
    check(
        Document(ids, causal=causal),
        brute(
            batch, length, length, lambda b, i, j: ids[b, i] == ids[b, j] and (j <= i or not causal)
        ),
    )


def natten_neighbours(n: int, k: int, d: int, i: int, causal: bool = False) -> set[int]:
    """NATTEN's rule on one axis: the k nearest same-dilation-group indices, window clamped inside;
    causal: the k most recent ones up to i."""
    group = [x for x in range(n) if x % d == i % d]
    pos = group.index(i)
    if causal:
        return set(group[max(0, pos - k + 1) : pos + 1])
    start = max(0, min(pos - k // 2, len(group) - k))
    return set(group[start : start + k])


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3))
def test_neighborhood(data, dims):
    grid = tuple(data.draw(st.lists(st.integers(1, 5), min_size=dims, max_size=dims)))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in grid)
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in grid)
    causal = tuple(data.draw(st.booleans()) for _ in grid)
    coords = list(itertools.product(*(range(n) for n in grid)))

    def rule(b, i, j):
        return all(
            coords[j][a] in natten_neighbours(grid[a], kernel[a], dilation[a], coords[i][a], causal[a])
            for a in range(dims)
        )

    length = len(coords)
    check(Neighborhood(grid, kernel, dilation, causal), brute(1, length, length, rule))


def strided_neighbours(n: int, k: int, d: int, s: int, i: int, causal: bool) -> set[int]:
    """GNA on one axis: runs of s queries of a dilation group share the window of their leader (the middle
    one, the last one if causal, cut at the border); a causal query still sees no key after itself."""
    group = [x for x in range(n) if x % d == i % d]
    pos = group.index(i)
    leader = min(pos // s * s + (s - 1 if causal else s // 2), len(group) - 1)
    if causal:
        return set(group[max(0, leader - k + 1) : pos + 1])
    start = max(0, min(leader - k // 2, len(group) - k))
    return set(group[start : start + k])


@SETTINGS
@given(data=st.data(), dims=st.integers(1, 3), extra=st.integers(0, 3))
def test_neighborhood_with_stride_and_additional_keys(data, dims, extra):
    grid = tuple(data.draw(st.lists(st.integers(1, 6), min_size=dims, max_size=dims)))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in grid)
    stride = tuple(data.draw(st.integers(1, k)) for k in kernel)
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in grid)
    causal = tuple(data.draw(st.booleans()) for _ in grid)
    coords = list(itertools.product(*(range(n) for n in grid)))
    length = len(coords)

    def rule(b, i, j):
        i -= extra  # brute() aligns queries to the end of the keys; the grid's queries are its first L
        return j >= length or all(
            coords[j][a] in strided_neighbours(grid[a], kernel[a], dilation[a], stride[a], coords[i][a], causal[a])
            for a in range(dims)
        )

    mask = Neighborhood(grid, kernel, dilation, causal, stride=stride, additional_keys=extra)
    check(mask, brute(1, length, length + extra, rule))


def test_neighborhood_rejects_a_stride_past_the_kernel_and_the_wrong_lengths():
    with pytest.raises(ValueError, match=r"stride=\(1, 4\) must be between 1 and kernel_size=\(3, 3\)"):
        Neighborhood((6, 7), 3, stride=(1, 4))
    with pytest.raises(ValueError, match="wants 42 queries and 42 \\+ 2 additional keys, got 42 queries and 42 keys"):
        Neighborhood((6, 7), 3, additional_keys=2).dense(42, 42)


def test_neighborhood_sees_full_window_at_borders():
    mask = Neighborhood((6, 7), 3).dense(42, 42)
    assert (mask.sum(-1) == 9).all()


@SETTINGS
@given(data=st.data(), nodes=st.integers(1, 8), self_loops=st.booleans(), batch=st.integers(1, 2))
def test_edge_index(data, nodes, self_loops, batch):
    edge_lists = [
        data.draw(
            st.lists(st.tuples(st.integers(0, nodes - 1), st.integers(0, nodes - 1)), max_size=12)
        )
        for _ in range(batch)
    ]
    edges = [torch.tensor(e, dtype=torch.long).reshape(-1, 2).T for e in edge_lists]
    mask = EdgeIndex(edges if batch > 1 else edges[0], num_nodes=nodes, self_loops=self_loops)
    # target (query) attends source (key)
    check(
        mask,
        brute(
            batch, nodes, nodes, lambda b, i, j: (j, i) in edge_lists[b] or (self_loops and i == j)
        ),
    )


def relational_batch(data, batch, length, rows):
    row_ids = torch.tensor(
        [
            data.draw(st.lists(st.integers(0, rows - 1), min_size=length, max_size=length))
            for _ in range(batch)
        ]
    )
    col_ids = torch.tensor(
        [
            data.draw(st.lists(st.integers(0, 2), min_size=length, max_size=length))
            for _ in range(batch)
        ]
    )
    # Each row has up to two parent rows; every cell of a row carries its row's parents (RT's form).
    parents_of_row = [
        [
            data.draw(st.lists(st.integers(-1, rows - 1), min_size=2, max_size=2))
            for _ in range(rows)
        ]
        for _ in range(batch)
    ]
    parent_rows = torch.tensor(
        [[parents_of_row[b][r] for r in row_ids[b].tolist()] for b in range(batch)]
    )
    return row_ids, col_ids, parents_of_row, parent_rows


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 2), length=lengths, rows=st.integers(1, 4))
def test_relational_transformer_masks(data, batch, length, rows):
    row_ids, col_ids, parents_of_row, parent_rows = relational_batch(data, batch, length, rows)
    row = lambda b, i: int(row_ids[b, i])  # noqa: E731

    check(SameRow(row_ids), brute(batch, length, length, lambda b, i, j: row(b, i) == row(b, j)))
    check(
        SameColumn(col_ids),
        brute(batch, length, length, lambda b, i, j: col_ids[b, i] == col_ids[b, j]),
    )
    parent = ForeignKey.from_neighbours(row_ids, parent_rows, num_rows=rows, direction="parent")
    child = ForeignKey.from_neighbours(row_ids, parent_rows, num_rows=rows, direction="child")
    check(
        parent,
        brute(batch, length, length, lambda b, i, j: row(b, j) in parents_of_row[b][row(b, i)]),
    )
    check(
        child,
        brute(batch, length, length, lambda b, i, j: row(b, i) in parents_of_row[b][row(b, j)]),
    )
    # The Relational Transformer's feature attention: own row or a parent row.
    check(
        SameRow(row_ids) | parent,
        brute(
            batch,
            length,
            length,
            lambda b, i, j: row(b, i) == row(b, j) or row(b, j) in parents_of_row[b][row(b, i)],
        ),
    )


@SETTINGS
@given(length=lengths, window=st.integers(1, 6), chunk=st.integers(1, 4))
def test_and_or_combinations(length, window, chunk):
    a, b, c = Causal(), SlidingWindow(window, causal=False), Chunked(chunk)
    ra = lambda _, i, j: j <= i  # noqa: E731
    rb = lambda _, i, j: abs(i - j) <= window // 2  # noqa: E731
    rc = lambda _, i, j: i // chunk == j // chunk  # noqa: E731
    check(a & b, brute(1, length, length, lambda *p: ra(*p) and rb(*p)))
    check(a | c, brute(1, length, length, lambda *p: ra(*p) or rc(*p)))
    check((a & b) | c, brute(1, length, length, lambda *p: (ra(*p) and rb(*p)) or rc(*p)))
    check(
        a & (b | c) & c,
        brute(1, length, length, lambda *p: ra(*p) and (rb(*p) or rc(*p)) and rc(*p)),
    )


def test_combined_with_batched_mask_broadcasts():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mask = Causal() & KeyPadding(valid=valid)
    check(mask, brute(2, 3, 3, lambda b, i, j: j <= i and bool(valid[b, j])))


def test_dense_mask_per_head():
    m = torch.rand(2, 3, 4, 5) > 0.5
    dense = Dense(m)
    assert torch.equal(dense.dense(4, 5), m)
    b, h, q, kv = torch.meshgrid(*(torch.arange(n) for n in m.shape), indexing="ij")
    assert torch.equal(dense.allowed(b, h, q, kv, 4, 5), m)


def test_same_value_is_shared_class():
    assert SameRow is SameValue and SameColumn is SameValue
