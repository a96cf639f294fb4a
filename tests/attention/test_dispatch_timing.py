"""Measured dispatch: the first call of a shape times every supporting backend; later calls reuse the winner."""

from __future__ import annotations

import time

import pytest
import torch

from shared_attention.dispatch import (
    Case,
    explain,
    register,
    select_measured,
    timed_choices,
    timing_enabled,
)
from shared_attention.masks import Causal, KeyPadding

OP = "test-timing"


class Sleepy:
    """A backend that supports everything, ranks as told and takes `seconds` per call."""

    def __init__(self, name: str, rank: float, seconds: float) -> None:
        self.name, self._rank, self.seconds, self.calls = name, rank, seconds, 0

    def supports(self, case: Case) -> str | None:
        return None

    def rank(self, case: Case) -> float:
        return self._rank

    def __call__(self, q, k, v, *, mask=None):
        self.calls += 1
        time.sleep(self.seconds)
        return q * 1.0


@pytest.fixture
def cpu_timing():
    """Measured dispatch on CPU for the test (it is CUDA-only by default); restored afterwards."""
    was = timing_enabled()
    timing_enabled(True, device_types=("cpu",))
    guessed = register(OP, Sleepy("guessed", rank=1.0, seconds=0.02))  # ranked first, but slow
    fast = register(OP, Sleepy("fast", rank=5.0, seconds=0.0))
    register(OP, Sleepy("oracle", rank=100.0, seconds=0.0))  # never timed: ranked as the fp32 reference
    yield guessed, fast
    timing_enabled(was, device_types=("cuda",))


def case_for(q, *, mask=None, training=False) -> Case:
    b, h, length, d = q.shape
    return Case(op=OP, device_type=q.device.type, dtype=q.dtype, training=training, batch=b, heads=h, kv_heads=h,
                q_len=length, kv_len=length, head_dim=d, v_dim=d, mask=mask, device=q.device)


def test_the_measured_winner_beats_the_rank_and_is_cached(cpu_timing):
    guessed, fast = cpu_timing
    q = torch.randn(1, 2, 8, 4)
    case = case_for(q, mask=Causal())
    assert select_measured(case, "auto", (q, q, q), {"mask": Causal()}) is fast
    timed_calls = guessed.calls, fast.calls
    assert timed_calls[0] >= 2 and timed_calls[1] >= 2  # warm-up + repeats for each timed backend
    # Same shape again: a lookup, no timing calls.
    assert select_measured(case, "auto", (q, q, q), {"mask": Causal()}) is fast
    assert (guessed.calls, fast.calls) == timed_calls
    chosen, times = next(v for k, v in timed_choices().items() if k[0] == OP)
    assert chosen == "fast" and set(times) == {"guessed", "fast"}  # the rank-100 oracle is never timed
    why = explain(case)
    assert why.chosen == "fast" and "measured slower" in why.rejected["guessed"]
    # A new shape is timed anew.
    q2 = torch.randn(1, 2, 16, 4)
    select_measured(case_for(q2), "auto", (q2, q2, q2), {})
    assert guessed.calls > timed_calls[0]


def test_training_times_forward_and_backward(cpu_timing):
    _, fast = cpu_timing
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    assert select_measured(case_for(q, training=True), "auto", (q, q, q), {}) is fast
    assert q.grad is None  # timing differentiated copies, not the caller's tensors


def test_off_switch_named_backends_and_tensor_masks_use_ranks(cpu_timing):
    guessed, fast = cpu_timing
    q = torch.randn(1, 2, 8, 4)
    # Masks that hold tensors would be keyed by identity (every call new): ranks decide, nothing is timed.
    padding = KeyPadding(lengths=torch.tensor([5]))
    assert select_measured(case_for(q, mask=padding), "auto", (q, q, q), {"mask": padding}) is guessed
    assert guessed.calls == 0 and fast.calls == 0
    # A named backend is never second-guessed.
    assert select_measured(case_for(q), "guessed", (q, q, q), {}) is guessed
    timing_enabled(False)
    assert select_measured(case_for(q), "auto", (q, q, q), {}) is guessed
    assert fast.calls == 0 and not timed_choices()


def test_cpu_is_not_timed_by_default():
    q = torch.randn(1, 2, 8, 4)
    timing_enabled(True)
    from shared_attention import attention

    attention(q, q, q, mask=Causal())
    assert not any(key[1] == "cpu" for key in timed_choices())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_runs_the_fastest_measured_backend_and_matches_the_reference():
    from shared_attention import attention
    from shared_attention.masks import Neighborhood

    timing_enabled(True)
    mask = Neighborhood((32, 32), 7)
    q, k, v = (torch.randn(1, 4, 1024, 64, device="cuda") for _ in range(3))
    out = attention(q, k, v, mask=mask)
    [(chosen, times)] = [choice for key, choice in timed_choices().items() if key[11] == mask and not key[3]]
    assert chosen == min(times, key=times.__getitem__) and len(times) >= 2
    assert explain(case_for_cuda(q, mask)).chosen == chosen
    torch.testing.assert_close(out, attention(q, k, v, mask=mask, backend="reference"), atol=2e-3, rtol=2e-3)


def case_for_cuda(q, mask) -> Case:
    from shared_attention.functional import make_case

    return make_case(q, q, q, mask=mask)
