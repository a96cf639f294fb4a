"""Backend registry and dispatch.

Each op name (e.g. "softmax" for softmax attention, "linear" for linear attention) has a list of
registered backends. A backend says whether it can run a ``Case`` (``supports`` returns None, or
the reason it cannot) and how much it is preferred there (``rank``: lower runs first; ranks come
from measurements in ``apps/bench/attention.py``). ``select`` picks the best-ranked backend that
supports the case, or the one named by ``backend=`` (failing with the reason when it cannot);
``explain`` says what was chosen and why each other backend was not.
"""

from __future__ import annotations

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
]
