"""Register tokens for vision-style models, trained and training-free.

``Registers``: learned tokens appended to the token sequence and dropped at the output (Darcet, Oquab,
Mairal & Bojanowski 2024, "Vision Transformers Need Registers", arXiv:2309.16588). They are full
tokens: queries and keys of every layer, seeing every token and seen by every token, so the model can
keep global information there instead of in high-norm outlier patches. ``Registers.mask`` extends a
mask over the L tokens to the L + R of the sequence, ``Registers.padding`` a key padding mask.

``TestTimeRegisters``: the training-free variant (Jiang, Dravid, Efros & Gandelsman 2025, "Vision
Transformers Don't Need Trained Registers", arXiv:2506.08010). A few MLP neurons ("register neurons")
put the high-norm activations on the outlier tokens; ``find_register_neurons`` finds them on sample
inputs (mean |activation| at the tokens whose norm passes a threshold at a given layer, averaged over
inputs, highest first). At test time one extra token starting at zero is appended, and in each of
those neurons the activation of the extra token is set to the neuron's maximum over all tokens and
its activation on the image tokens to zero: the outlier moves out of the image, into the extra token.

Legend: B batch, L tokens, R register tokens, dim width, F MLP hidden width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from shared_attention.masks import And, Causal, Mask, Or


class Registers(nn.Module):
    """R learned register tokens (R, dim): ``append`` (B, L, dim) -> (B, L + R, dim), ``drop`` the inverse.

    Append them after the input's absolute position encodings (registers have no position). With RoPE
    inside ``Attention`` they are rotated as tokens L..L + R - 1, unless ``positions`` say otherwise.
    """

    def __init__(self, dim: int, num_registers: int = 4) -> None:
        super().__init__()
        if num_registers < 1:
            raise ValueError(f"Registers needs num_registers >= 1, got {num_registers}")
        # Tiny start, as DINOv2 and timm: the registers begin almost as zero tokens and learn what to hold.
        self.tokens = nn.Parameter(torch.randn(num_registers, dim) * 1e-6)

    @property
    def num_registers(self) -> int:
        return self.tokens.shape[0]

    def append(self, x: Tensor) -> Tensor:
        """x (B, L, dim) -> (B, L + R, dim), registers last."""
        registers = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x, registers], dim=1)

    def drop(self, x: Tensor) -> Tensor:
        """(B, L + R, dim) -> (B, L, dim): the tokens without the registers."""
        return x[:, : -self.num_registers]

    def registers_of(self, x: Tensor) -> Tensor:
        """(B, L + R, dim) -> (B, R, dim): the registers' states."""
        return x[:, -self.num_registers :]

    def mask(self, inner: Mask | None) -> Mask | None:
        """A mask over the L tokens -> one over the L + R tokens that lets registers see and be seen by all."""
        return None if inner is None else RegisterMask(inner, self.num_registers)

    def padding(self, valid: Tensor | None) -> Tensor | None:
        """Key padding bool (B, L), True = real -> (B, L + R): registers are real tokens."""
        if valid is None:
            return None
        return torch.cat([valid, valid.new_ones(valid.shape[0], self.num_registers)], dim=1)

    def extra_repr(self) -> str:
        return f"num_registers={self.num_registers}, dim={self.tokens.shape[1]}"


def _is_causal(mask: Mask) -> bool:
    if isinstance(mask, Causal):
        return True
    if isinstance(mask, (And, Or)):
        return any(_is_causal(m) for m in mask.parts)
    causal = getattr(mask, "causal", False)
    return any(causal) if isinstance(causal, tuple) else bool(causal)


@dataclass(frozen=True, eq=False)
class RegisterMask(Mask):
    """``inner`` over the first Lq - R queries and Lk - R keys; the last R queries and keys (registers)
    attend and are attended everywhere. A causal ``inner`` is refused: registers read every token, so
    a token reading a register would read the future (causal models take ``Sinks`` instead)."""

    inner: Mask
    num_registers: int
    batch_dependent: bool = field(init=False)

    def __post_init__(self):
        if _is_causal(self.inner):
            raise ValueError(
                "registers read every token, so a causal mask would leak the future through them; "
                "use Attention(variant=Sinks(n)) in a causal model"
            )
        object.__setattr__(self, "batch_dependent", self.inner.batch_dependent)

    @property
    def partial_tile_weight(self) -> float:
        return self.inner.partial_tile_weight + 1.0

    def allowed(self, b, h, q_idx, kv_idx, q_len, kv_len):
        tokens_q, tokens_kv = q_len - self.num_registers, kv_len - self.num_registers
        # Register indices are clamped into range for the inner predicate; its answer is overridden there.
        inner = self.inner.allowed(
            b, h, q_idx.clamp(max=tokens_q - 1), kv_idx.clamp(max=tokens_kv - 1), tokens_q, tokens_kv
        )
        return inner | (q_idx >= tokens_q) | (kv_idx >= tokens_kv)

    def batch_size(self):
        return self.inner.batch_size()

    def device(self):
        return self.inner.device()


# --- test-time registers (training-free) ---------------------------------------------------------


class RegisterNeuron(NamedTuple):
    layer: int  # index into the activation modules given
    neuron: int  # index along the activation's last axis (F)
    score: float  # mean |activation| at the outlier tokens


def _record_outputs(modules: Sequence[nn.Module], store: list) -> list:
    def hook(index):
        return lambda module, args, output: store.__setitem__(index, output.detach())

    return [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]


@torch.no_grad()
def find_register_neurons(
    run: Callable[[Any], object],
    inputs: Iterable[Any],
    *,
    activations: Sequence[nn.Module],
    outliers_at: nn.Module,
    norm_threshold: float,
    top_k: int = 10,
) -> list[RegisterNeuron]:
    """The ``top_k`` neurons most active on outlier tokens, highest first (the paper's detection).

    ``run(batch)`` runs the model on each batch of ``inputs``; ``activations`` are the modules whose
    outputs (B, L, F) are the MLP hidden activations of each layer to search (e.g. each block's GELU,
    up to the layer where outliers appear); ``outliers_at`` the module whose output (B, L, dim) marks as
    outliers the tokens with norm > ``norm_threshold`` (e.g. the block where high norms appear). For each
    input with outliers, a neuron scores its mean |activation| over those tokens; scores are averaged
    over the inputs with outliers.
    """
    acts: list = [None] * len(activations)
    marked: list = [None]
    handles = _record_outputs(activations, acts) + _record_outputs([outliers_at], marked)
    total, images = None, 0
    try:
        for batch in inputs:
            run(batch)
            outlier = marked[0].float().norm(dim=-1) > norm_threshold  # (B, L)
            stacked = torch.stack([a.float().abs() for a in acts], dim=1)  # (B, layers, L, F)
            per_image = (stacked * outlier[:, None, :, None]).sum(2) / outlier.sum(1).clamp(min=1)[:, None, None]
            has = outlier.any(dim=1)
            images += int(has.sum())
            scores = per_image[has].sum(0)
            total = scores if total is None else total + scores
    finally:
        for h in handles:
            h.remove()
    if not images:
        raise ValueError(f"no token's norm exceeded norm_threshold={norm_threshold} at outliers_at: lower it")
    mean = (total / images).flatten()
    values, order = mean.topk(min(top_k, mean.numel()))
    width = total.shape[1]
    return [RegisterNeuron(int(i) // width, int(i) % width, float(v)) for v, i in zip(values, order, strict=True)]


class TestTimeRegisters:
    """Context manager: the model runs with ``num_registers`` extra zero tokens holding the register
    neurons' outliers (forward hooks; nothing is trained or changed in the model).

    tokens_in: the module whose output (B, L, dim) is the token sequence the blocks take (after the
        position encodings); the extra tokens are appended to it.
    tokens_out: the module whose output (B, L + R, dim) the extra tokens are dropped from (e.g. the
        last block, before pooling).
    activations, neurons: the activation modules and ``RegisterNeuron``s (or (layer, neuron) pairs)
        from ``find_register_neurons``.
    keep_first: leading special tokens (a class token) whose activations are left as they are.
    Masks tied to L (a Neighborhood grid, grid RoPE) do not cover the extra token and raise.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        *,
        tokens_in: nn.Module,
        tokens_out: nn.Module,
        activations: Sequence[nn.Module],
        neurons: Iterable[tuple[int, int] | RegisterNeuron],
        num_registers: int = 1,
        keep_first: int = 0,
    ) -> None:
        self.tokens_in, self.tokens_out, self.activations = tokens_in, tokens_out, list(activations)
        self.num_registers, self.keep_first = num_registers, keep_first
        by_layer: dict[int, list[int]] = {}
        for layer, neuron, *_ in neurons:
            if not 0 <= layer < len(self.activations):
                raise ValueError(f"register neuron layer {layer} is not among the {len(self.activations)} activations")
            by_layer.setdefault(layer, []).append(neuron)
        self.neurons = by_layer
        self._handles: list = []

    def shift(self, output: Tensor, neurons: list[int]) -> Tensor:
        """One layer's activations (B, L + R, F) with the given neurons' outliers moved to the extra tokens."""
        out = output.clone()
        index = torch.tensor(neurons, device=output.device)
        peak = output[:, :, index].amax(dim=1, keepdim=True)  # (B, 1, n) over every token
        out[:, -self.num_registers :, index] = peak.expand(-1, self.num_registers, -1)
        out[:, self.keep_first : -self.num_registers, index] = 0
        return out

    def __enter__(self) -> TestTimeRegisters:
        r = self.num_registers

        def append(module, args, output):
            return torch.cat([output, output.new_zeros(output.shape[0], r, output.shape[2])], dim=1)

        self._handles.append(self.tokens_in.register_forward_hook(append))
        for layer, neurons in self.neurons.items():
            hook = (lambda n: lambda module, args, output: self.shift(output, n))(neurons)
            self._handles.append(self.activations[layer].register_forward_hook(hook))
        self._handles.append(self.tokens_out.register_forward_hook(lambda module, args, output: output[:, :-r]))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


__all__ = ["RegisterMask", "RegisterNeuron", "Registers", "TestTimeRegisters", "find_register_neurons"]
