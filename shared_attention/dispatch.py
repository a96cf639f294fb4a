"""Backend registry and dispatch.

Each op name (e.g. "softmax" for softmax attention, "linear" for linear attention) has a list of
registered backends. A backend says whether it can run a ``Case`` (``supports`` returns None, or
the reason it cannot) and how much it is preferred there (``rank``: lower runs first; ranks come
from measurements in ``apps/bench/attention.py``). ``select`` picks the best-ranked backend that
supports the case, or the one named by ``backend=`` (failing with the reason when it cannot);
``explain`` says what was chosen and why each other backend was not.

Ranks are educated guesses; on CUDA they are not trusted for the final choice. The first call of a shape
(op, dtype, mode, sizes, mask, score mod) times every supporting backend on the call's own tensors (forward,
or forward + backward when gradients are needed) and remembers the fastest: later calls of the shape cost a
dict lookup. Set ``PANFORMER_DISPATCH_TIMING=0`` (or call ``timing_enabled(False)``) to choose by rank alone,
e.g. for reproducible kernel choice across machines. Calls whose mask or score mod holds tensors (padding,
documents, graphs) are not timed: their keys would be identities, so every call would look new.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class Case:
    """What a backend needs to know to accept a call (shapes, device, mode, mask, score mod)."""

    op: str
    device_type: str  # "cpu" or "cuda"
    dtype: torch.dtype
    training: bool  # gradients are needed through the call
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_dim: int
    mask: Any = None  # a masks.Mask or None
    score_mod: Any = None  # a score_mods.ScoreMod or None
    device: torch.device | None = None  # the tensors' device (for lowerings a rank may inspect)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class Backend(Protocol):
    name: str

    def supports(self, case: Case) -> str | None:
        """None when the backend can run the case, else the reason it cannot."""

    def rank(self, case: Case) -> float:
        """Preference among supporting backends (lower is chosen first)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(op: str, backend: Backend) -> Backend:
    """Add (or replace) ``backend`` under ``op``."""
    _REGISTRY.setdefault(op, {})[backend.name] = backend
    return backend


def backends(op: str) -> dict[str, Backend]:
    """The backends registered for ``op``, by name."""
    if op not in _REGISTRY:
        raise KeyError(f"no backends registered for op {op!r}; known ops: {sorted(_REGISTRY)}")
    return dict(_REGISTRY[op])


@dataclass(frozen=True)
class Explanation:
    """The backend chosen for a case and why each other one was not."""

    case: Case
    chosen: str | None
    rejected: dict[str, str]  # backend name -> reason

    def __str__(self) -> str:
        lines = [
            f"op={self.case.op} on {self.case.device_type} ({'training' if self.case.training else 'inference'}): {self.chosen}"
        ]
        lines += [f"  not {name}: {reason}" for name, reason in self.rejected.items()]
        return "\n".join(lines)


def explain(case: Case, backend: str = "auto") -> Explanation:
    """Which backend runs ``case`` (auto or named) and why the others do not."""
    candidates = backends(case.op)
    if backend != "auto":
        if backend not in candidates:
            raise ValueError(
                f"unknown backend {backend!r} for op {case.op!r}; known: {sorted(candidates)}"
            )
        reason = candidates[backend].supports(case)
        rejected = {
            name: "not requested (backend override)" for name in candidates if name != backend
        }
        if reason is not None:
            rejected[backend] = reason
        return Explanation(case, None if reason else backend, rejected)

    supported, rejected = [], {}
    for name, b in candidates.items():
        reason = b.supports(case)
        if reason is None:
            supported.append((b.rank(case), name))
        else:
            rejected[name] = reason
    supported.sort()
    key = _timing_key(case) if _TIMED else None
    if key in _TIMED:
        chosen, times = _TIMED[key]
        for _, name in supported:
            if name != chosen:
                measured = f"{times[name]:.3f} ms" if name in times else "not timed"
                rejected[name] = f"measured slower on this shape ({measured} vs {times[chosen]:.3f} ms)"
        return Explanation(case, chosen, rejected)
    for rank, name in supported[1:]:
        rejected[name] = f"supported but ranked lower ({rank:g} vs {supported[0][0]:g})"
    return Explanation(case, supported[0][1] if supported else None, rejected)


def select(case: Case, backend: str = "auto") -> Backend:
    """The backend that runs ``case``; raises ValueError with the reasons when none can."""
    candidates = backends(case.op)
    if backend == "auto":
        # The hot path of every call: no explanation strings unless nothing fits.
        ranked = [
            (b.rank(case), name) for name, b in candidates.items() if b.supports(case) is None
        ]
        if ranked:
            return candidates[min(ranked)[1]]
    elif backend in candidates and candidates[backend].supports(case) is None:
        return candidates[backend]
    why = explain(case, backend)
    if backend != "auto":
        raise ValueError(
            f"backend {backend!r} cannot run this {case.op} call: {why.rejected[backend]}"
        )
    reasons = "; ".join(f"{n}: {r}" for n, r in why.rejected.items())
    raise ValueError(f"no backend can run this {case.op} call ({reasons})")


# Measured choice ------------------------------------------------------------------------------------------

_TIMING = {"enabled": os.environ.get("PANFORMER_DISPATCH_TIMING", "1") != "0", "device_types": ("cuda",)}
_TIMED: dict[tuple, tuple[str, dict[str, float]]] = {}  # shape key -> (fastest backend, ms per backend)
_UNTIMED_RANK = 100.0  # backends ranked here or worse (the fp32 reference) are never timed: they materialise


def timing_enabled(enabled: bool | None = None, *, device_types: tuple[str, ...] | None = None) -> bool:
    """Turn measured dispatch on or off (and on which device types; CUDA by default); returns the state.

    ``timing_enabled()`` only reads it. Turning it off or changing device types clears the cache.
    """
    if enabled is not None and enabled != _TIMING["enabled"]:
        _TIMING["enabled"] = enabled
        _TIMED.clear()
    if device_types is not None:
        _TIMING["device_types"] = tuple(device_types)
        _TIMED.clear()
    return bool(_TIMING["enabled"])


def timed_choices() -> dict[tuple, tuple[str, dict[str, float]]]:
    """A copy of the timing cache: shape key -> (chosen backend, {backend: ms})."""
    return dict(_TIMED)


def _by_value(obj: Any) -> bool:
    """True for None and for frozen value objects (hashed by their fields, not their identity)."""
    if obj is None:
        return True
    eq = type(obj).__eq__
    if eq is object.__eq__:
        return False  # identity equality: e.g. masks that hold tensors (dataclass eq=False)
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _timing_key(case: Case) -> tuple | None:
    if not _TIMING["enabled"] or case.device_type not in _TIMING["device_types"]:
        return None
    if not (_by_value(case.mask) and _by_value(case.score_mod)):
        return None
    if torch.compiler.is_compiling():
        return None  # inside a trace: ranks decide (the timing loop itself would be traced)
    if case.device is not None and case.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    key = (case.op, str(case.device), case.dtype, case.training, case.batch, case.heads, case.kv_heads,
           case.q_len, case.kv_len, case.head_dim, case.v_dim, case.mask, case.score_mod,
           tuple(sorted(case.extra.items())) if case.extra else ())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _time_ms(run: Callable[[], Any], device: torch.device, *, repeats: int = 3) -> float:
    """Median milliseconds of ``run`` after one warm-up call (which absorbs compilation)."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _measure(backend: Backend, case: Case, args: tuple, kwargs: dict) -> float:
    """Time one backend on the call's tensors: forward, or forward + backward on detached copies."""
    device = case.device or args[0].device
    if not case.training:
        with torch.no_grad():
            return _time_ms(lambda: backend(*args, **kwargs), device)
    leaves = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    grads = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]

    def step() -> None:
        out = backend(*leaves, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, grads, torch.ones_like(out), allow_unused=True)

    return _time_ms(step, device)


def select_measured(case: Case, backend: str, args: tuple, kwargs: dict) -> Backend:
    """``select``, except that on a timed device an automatic choice among several supporting backends is
    the fastest one measured on this call's tensors (once per shape key; see the module docstring).

    ``args``/``kwargs`` are what the chosen backend will be called with. A backend that fails while being
    timed (e.g. out of memory) is skipped; if all fail, the ranked choice runs (and raises its own error).
    """
    if backend != "auto":
        return select(case, backend)
    key = _timing_key(case)
    if key is None:
        return select(case, backend)
    candidates = backends(case.op)
    if key in _TIMED:
        return candidates[_TIMED[key][0]]
    timed = [name for name, b in candidates.items() if b.supports(case) is None and b.rank(case) < _UNTIMED_RANK]
    if len(timed) < 2:
        return select(case, backend)
    times: dict[str, float] = {}
    for name in timed:
        try:
            times[name] = _measure(candidates[name], case, args, kwargs)
        except Exception:  # a backend that cannot run this shape here (e.g. out of memory) is not chosen
            times[name] = float("inf")
    fastest = min(times, key=times.__getitem__)
    if times[fastest] == float("inf"):
        return select(case, backend)
    _TIMED[key] = (fastest, times)
    return candidates[fastest]


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Training mode for dispatch: autograd will differentiate through the call."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


__all__ = [
    "Backend",
    "Case",
    "Explanation",
    "backends",
    "explain",
    "needs_grad",
    "register",
    "select",
    "select_measured",
    "timed_choices",
    "timing_enabled",
]
