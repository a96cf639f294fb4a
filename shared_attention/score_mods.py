"""Score modifications: changes to the attention logits before the softmax, as composable values.

Each score mod is defined once, element-wise: ``modify(score, b, h, q_idx, kv_idx, q_len, kv_len)``
over broadcastable index tensors, where ``score`` is the already scaled logit q·k * scale. That
definition lowers to

- ``apply(scores)`` on materialised scores (B, H, Lq, Lk) for the reference oracle,
- ``flex(q_len, kv_len)``: a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``,
- ``additive_bias(...)``: a float tensor added to the logits, for SDPA, when the mod is a pure
  additive bias (``additive = True``).

Learned mods are values too: ``build(dim=..., num_heads=...)`` returns the nn.Module that holds
their parameters; calling that module on the layer input x (B, L, dim) returns the ScoreMod for
that call (data-dependent ones such as ForgetGate read x).

Legend: B batch, H heads, Lq query length, Lk key length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FlexScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _query_positions(q_idx: Tensor, q_len: int, kv_len: int) -> Tensor:
    # Queries are the last q_len key positions (same convention as masks.py).
    return q_idx + (kv_len - q_len)


class ScoreMod:
    """Base class: subclasses implement ``modify``."""

    # True when modify(score) == score + bias(b, h, q, kv): SDPA can then take it as a float mask.
    additive: bool = False

    def modify(
        self,
        score: Tensor,
        b: Tensor,
        h: Tensor,
        q_idx: Tensor,
        kv_idx: Tensor,
        q_len: int,
        kv_len: int,
    ) -> Tensor:
        raise NotImplementedError

    def apply(self, scores: Tensor) -> Tensor:
        """Modify materialised scores (B, H, Lq, Lk)."""
        batch, heads, q_len, kv_len = scores.shape
        b, h, q_idx, kv_idx = _index_grid(batch, heads, q_len, kv_len, scores.device)
        return self.modify(scores, b, h, q_idx, kv_idx, q_len, kv_len)

    def flex(self, q_len: int, kv_len: int) -> FlexScoreMod:
        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.modify(score, b, h, q_idx, kv_idx, q_len, kv_len)

        return score_mod

    def additive_bias(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """The bias (B or 1, H or 1, Lq, Lk) that this additive mod adds to the logits."""
        if not self.additive:
            raise TypeError(f"{type(self).__name__} is not an additive bias")
        b, h, q_idx, kv_idx = _index_grid(batch, heads, q_len, kv_len, device)
        zero = torch.zeros((), device=device, dtype=dtype)
        return (
            self.modify(zero, b, h, q_idx, kv_idx, q_len, kv_len)
            .to(dtype)
            .expand(batch, heads, q_len, kv_len)
        )

    def build(self, *, dim: int, num_heads: int) -> nn.Module | None:
        """The module holding this mod's parameters, or None when it has none."""
        return None


def _index_grid(batch: int, heads: int, q_len: int, kv_len: int, device) -> tuple[Tensor, ...]:
    return (
        torch.arange(batch, device=device).view(-1, 1, 1, 1),
        torch.arange(heads, device=device).view(1, -1, 1, 1),
        torch.arange(q_len, device=device).view(1, 1, -1, 1),
        torch.arange(kv_len, device=device).view(1, 1, 1, -1),
    )


@dataclass(frozen=True)
class Compose(ScoreMod):
    """Apply ``mods`` in order."""

    mods: tuple[ScoreMod, ...]

    def __post_init__(self):
        object.__setattr__(self, "additive", all(m.additive for m in self.mods))

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        for m in self.mods:
            score = m.modify(score, b, h, q_idx, kv_idx, q_len, kv_len)
        return score


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes: a geometric series 2^(-8/n · i); for head counts that are not a
    power of two, the nearest lower power's series plus every other slope of the next one."""
    p = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (i + 1) / p) for i in range(p)]
    slopes += [2 ** (-4 * (2 * i + 1) / p) for i in range(num_heads - p)]
    return slopes


@dataclass(frozen=True)
class ALiBi(ScoreMod):
    """Attention with Linear Biases: score - slope_h · distance(i, j).

    causal=True adds slope_h · (j - i) (the paper's form; j > i is masked anyway);
    causal=False adds -slope_h · |i - j| (symmetric, for encoders).
    """

    num_heads: int
    causal: bool = True
    additive = True

    def _slope(self, h: Tensor) -> Tensor:
        # Closed form of alibi_slopes, element-wise in h (no tensor to move between devices).
        p = 2 ** math.floor(math.log2(self.num_heads))
        h = h.to(torch.float32)
        base = torch.exp2(-8.0 * (h + 1) / p)
        extra = torch.exp2(-4.0 * (2 * (h - p) + 1) / p)
        return torch.where(h < p, base, extra)

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        distance = (kv_idx - _query_positions(q_idx, q_len, kv_len)).to(torch.float32)
        if not self.causal:
            distance = -distance.abs()
        return score + self._slope(h) * distance


@dataclass(frozen=True)
class SoftCap(ScoreMod):
    """Soft-capping (Gemma 2): cap · tanh(score / cap)."""

    cap: float

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        return self.cap * torch.tanh(score / self.cap)


@dataclass(frozen=True, eq=False)
class Temperature(ScoreMod):
    """score / tau; tau a float or a per-head tensor (H,) (e.g. a learned temperature)."""

    tau: float | Tensor

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        if isinstance(self.tau, Tensor):
            return score / self.tau[h]
        return score / self.tau


@dataclass(frozen=True, eq=False)
class Bias(ScoreMod):
    """A materialised additive bias broadcastable to (B, H, Lq, Lk) (e.g. CoPE's)."""

    bias: Tensor
    additive = True

    def __post_init__(self):
        if self.bias.dim() != 4:
            raise ValueError(
                f"Bias must be 4-D (B, H, Lq, Lk)-broadcastable, got {tuple(self.bias.shape)}"
            )

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        t = self.bias
        b = b if t.shape[0] > 1 else torch.zeros_like(b)
        h = h if t.shape[1] > 1 else torch.zeros_like(h)
        return score + t[b, h, q_idx, kv_idx]


@dataclass(frozen=True, eq=False)
class RelativeBiasTable(ScoreMod):
    """Learned relative-position bias: score + table[h, clamp(j - i) + max_distance].

    ``table`` (H, 2 · max_distance + 1); distances beyond ±max_distance share the edge entry.
    """

    table: Tensor
    max_distance: int
    additive = True

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        distance = kv_idx - _query_positions(q_idx, q_len, kv_len)
        index = distance.clamp(-self.max_distance, self.max_distance) + self.max_distance
        return score + self.table[h, index]


@dataclass(frozen=True)
class RelativeBias(ScoreMod):
    """The learned relative-position bias as a value; ``build`` makes its (H, 2·max_distance+1) table."""

    max_distance: int = 128
    additive = True

    def build(self, *, dim: int, num_heads: int) -> nn.Module:
        return RelativeBiasModule(num_heads=num_heads, max_distance=self.max_distance)

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        raise TypeError(
            "RelativeBias is learned: pass it to Attention(score_mod=...), which builds its table"
        )


class RelativeBiasModule(nn.Module):
    """Holds the learned table; ``forward(x)`` returns the ScoreMod for this call."""

    def __init__(self, *, num_heads: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))

    def forward(self, x: Tensor | None = None) -> RelativeBiasTable:
        return RelativeBiasTable(self.table, self.max_distance)


@dataclass(frozen=True, eq=False)
class ForgetGateBias(ScoreMod):
    """The Forgetting Transformer's bias: score + sum_{l=j+1..i} log f_l = c_i - c_j.

    ``cumulative_log_forget`` c (B, H, Lk): the running sum of log forget gates over key positions.
    Only meaningful under a causal mask (for j > i the bias is positive and must be masked).
    """

    cumulative_log_forget: Tensor
    # -c as its own tensor: Flex's backward cannot differentiate two reads of one captured tensor.
    negated: Tensor = field(init=False, repr=False)
    additive = True

    def __post_init__(self):
        object.__setattr__(self, "negated", -self.cumulative_log_forget)

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        q_pos = _query_positions(q_idx, q_len, kv_len)
        return score + self.cumulative_log_forget[b, h, q_pos] + self.negated[b, h, kv_idx]


@dataclass(frozen=True)
class ForgetGate(ScoreMod):
    """Forgetting Transformer (FoX; Lin, Nikishin, He, Courville 2025, arXiv:2503.02130): a
    data-dependent forget gate per head and token, f_t = sigmoid(w_h · x_t + b_h), turned into the
    decay bias of ForgetGateBias. Use with Causal(). Decodes with a KV cache (the cache keeps the
    running sum of log gates beside the keys).

    ``prune_epsilon``: adaptive computation pruning (ACP, arXiv:2504.06949): skip the key blocks of
    ``block_size`` positions whose decay provably leaves them at most this much of a query's softmax
    mass (``shared_attention.forget_pruning``); the module's ``last_skipped_fraction`` says how many
    causal tiles the last call pruned."""

    prune_epsilon: float | None = None
    block_size: int = 128
    additive = True

    def build(self, *, dim: int, num_heads: int) -> nn.Module:
        return ForgetGateModule(dim=dim, num_heads=num_heads, prune_epsilon=self.prune_epsilon,
                                block_size=self.block_size)

    def modify(self, score, b, h, q_idx, kv_idx, q_len, kv_len):
        raise TypeError(
            "ForgetGate is learned: pass it to Attention(score_mod=...), which builds its gate"
        )


class ForgetGateModule(nn.Module):
    """x (B, L, dim) -> ForgetGateBias with c = cumsum(log sigmoid(x W + b)) (B, H, L).

    ``history`` (B, H, T): c of the T tokens before x (from a KV cache); c then continues from its
    last entry and covers T + L keys."""

    def __init__(self, *, dim: int, num_heads: int, prune_epsilon: float | None = None, block_size: int = 128):
        super().__init__()
        self.gate = nn.Linear(dim, num_heads)
        # Start with gates near 1 (little forgetting), so training starts close to plain softmax.
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 4.0)
        self.prune_epsilon, self.block_size = prune_epsilon, block_size
        self.last_skipped_fraction: Tensor | None = None  # set by Attention when pruning

    def forward(self, x: Tensor, *, history: Tensor | None = None) -> ForgetGateBias:
        log_forget = F.logsigmoid(self.gate(x).float())  # (B, L, H)
        c = log_forget.cumsum(dim=1).transpose(1, 2)
        if history is not None and history.shape[-1]:
            c = torch.cat((history, history[..., -1:] + c), dim=-1)
        return ForgetGateBias(c.contiguous())


__all__ = [
    "ALiBi",
    "Bias",
    "Compose",
    "ForgetGate",
    "ForgetGateBias",
    "ForgetGateModule",
    "RelativeBias",
    "RelativeBiasModule",
    "RelativeBiasTable",
    "ScoreMod",
    "SoftCap",
    "Temperature",
    "alibi_slopes",
]
