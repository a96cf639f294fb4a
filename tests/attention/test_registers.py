"""Register tokens: learned registers (appended, masked, dropped; through the attention backends against
the oracle) and training-free test-time registers (register neurons found and their outliers moved out
of the image tokens)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from shared_attention import (
    Attention,
    Causal,
    KeyPadding,
    Neighborhood,
    Registers,
    SlidingWindow,
    TestTimeRegisters,
    find_register_neurons,
)
from shared_attention.registers import RegisterMask
from tests.attention.conftest import assert_close


def test_registers_are_appended_last_and_dropped():
    registers = Registers(8, num_registers=3)
    x = torch.randn(2, 5, 8)
    with_registers = registers.append(x)
    assert with_registers.shape == (2, 8, 8)
    assert torch.equal(registers.drop(with_registers), x)
    assert torch.equal(registers.registers_of(with_registers)[1], registers.tokens.detach())
    assert registers.padding(torch.tensor([[True, False]])).tolist() == [[True, False, True, True, True]]


def test_register_mask_is_the_inner_mask_plus_full_register_rows_and_columns():
    inner = Neighborhood((3, 4), 3)
    mask = Registers(4, num_registers=2).mask(inner)
    dense = mask.dense(14, 14)[0, 0]
    assert torch.equal(dense[:12, :12], inner.dense(12, 12)[0, 0])
    assert dense[12:].all() and dense[:, 12:].all()


@pytest.mark.parametrize("inner", [Causal(), SlidingWindow(4), Neighborhood((4, 4), 3, causal=(True, False)),
                                   Causal() & KeyPadding(lengths=torch.tensor([3]))])
def test_causal_masks_are_refused(inner):
    with pytest.raises(ValueError, match="leak the future"):
        RegisterMask(inner, 2)


class RegisterEncoder(nn.Module):
    """A ViT-style encoder on a 4x4 grid: neighbourhood attention, 2 learned registers, dropped at the end."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.registers = Registers(dim, num_registers=2)
        self.layers = nn.ModuleList(Attention(dim, 2) for _ in range(2))
        with torch.no_grad():
            self.registers.tokens.normal_()  # trained registers are not ~0: make them matter here

    def forward(self, x: Tensor, valid: Tensor, backend: str) -> Tensor:
        mask = self.registers.mask(Neighborhood((4, 4), 3))
        padding = self.registers.padding(valid)
        x = self.registers.append(x)
        for layer in self.layers:
            x = x + layer(x, mask=mask, key_padding_mask=padding, backend=backend)
        return self.registers.drop(x)


def test_registers_through_attention_match_the_oracle_values_and_gradients():
    torch.manual_seed(0)
    model = RegisterEncoder()
    x = torch.randn(2, 16, 32, requires_grad=True)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 13:] = False
    weight = torch.randn(2, 16, 32)
    results = []
    for backend in ("auto", "reference"):
        out = model(x, valid, backend)
        grads = torch.autograd.grad((out * weight).sum(), [x, *model.parameters()])
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)
    assert model.registers.tokens in dict(model.named_parameters()).values()
    assert ref_grads[1].abs().sum() > 0  # the registers are learned: they get a gradient
    without = x.detach()
    plain = without.clone()
    for layer in model.layers:  # no registers: the outputs differ (the registers took part)
        plain = plain + layer(plain, mask=Neighborhood((4, 4), 3), key_padding_mask=valid)
    assert (plain - ref.detach()).abs().max() > 1e-3


# --- test-time registers -------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, 2)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Tokens in (B, L, dim) -> pooled features; block 0's MLP neuron 5 is a planted register neuron: it
    fires on tokens whose channel 0 is large and writes a large vector, making those tokens outliers."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.tokens_in = nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(3))
        with torch.no_grad():
            for block in self.blocks:
                for linear in (block.mlp[0], block.mlp[2]):
                    linear.weight.mul_(0.3)
            planted = self.blocks[0].mlp
            planted[0].weight[5].zero_()
            planted[0].weight[5, 0] = 2.0
            planted[0].bias[5] = -6.0
            planted[2].weight[:, 5] = 0.0
            planted[2].weight[3, 5] = 10.0

    def forward(self, x: Tensor) -> Tensor:
        x = self.tokens_in(x)
        for block in self.blocks:
            x = block(x)
        return x.mean(1)


def images(seed: int, batch: int = 4, tokens: int = 16, dim: int = 32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=g)
    x[torch.arange(batch), torch.randint(0, tokens, (batch,), generator=g), 0] = 12.0  # one outlier-maker each
    return x


def test_find_register_neurons_finds_the_planted_neuron():
    torch.manual_seed(0)
    model = TinyViT().eval()
    found = find_register_neurons(
        model, [images(1), images(2)], activations=[b.mlp[1] for b in model.blocks],
        outliers_at=model.blocks[0], norm_threshold=30.0, top_k=3,
    )
    assert (found[0].layer, found[0].neuron) == (0, 5)
    assert found[0].score > 5 * found[1].score
    with pytest.raises(ValueError, match="lower it"):
        find_register_neurons(model, [images(1)], activations=[model.blocks[0].mlp[1]],
                              outliers_at=model.blocks[0], norm_threshold=1e6)


def test_test_time_register_moves_the_outlier_out_of_the_image_tokens():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = images(3)
    after_block0: list[Tensor] = []
    handle = model.blocks[0].register_forward_hook(lambda m, a, out: after_block0.append(out.detach()))
    with torch.no_grad():
        pooled = model(x)
        with TestTimeRegisters(tokens_in=model.tokens_in, tokens_out=model.blocks[-1],
                               activations=[b.mlp[1] for b in model.blocks], neurons=[(0, 5)]):
            shifted = model(x)
        assert torch.equal(model(x), pooled)  # hooks gone on exit
    handle.remove()
    original, edited = after_block0[0], after_block0[1]
    assert original.norm(dim=-1).max() > 30  # one outlier token per image
    assert edited.shape[1] == 17  # the extra token rides along inside the blocks
    assert edited[:, :16].norm(dim=-1).max() < 15  # ... and holds the outlier instead of the image
    assert (edited[:, 16].norm(dim=-1) > 30).all()
    assert shifted.shape == pooled.shape  # dropped before pooling


def test_shift_sets_the_register_to_each_neurons_max_and_zeroes_the_image_tokens():
    registers = TestTimeRegisters(tokens_in=nn.Identity(), tokens_out=nn.Identity(), activations=[nn.Identity()],
                                  neurons=[(0, 1), (0, 3)], num_registers=2, keep_first=1)
    acts = torch.randn(2, 7, 5)  # a class token, 4 image tokens, 2 registers
    out = registers.shift(acts, [1, 3])
    expected = acts.clone()
    for b in range(2):
        for n in (1, 3):
            expected[b, 5:, n] = acts[b, :, n].max()
            expected[b, 1:5, n] = 0.0
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="layer 2"):
        TestTimeRegisters(tokens_in=nn.Identity(), tokens_out=nn.Identity(), activations=[nn.Identity()],
                          neurons=[(2, 0)])
