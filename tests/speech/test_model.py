"""MossFormer2 / MossFormer separator: shapes, parameter counts, and the gated dilated FSMN block."""

from __future__ import annotations

import pytest
import torch

from panformer.speech.domain import MossFormer2Config, MossFormerConfig, build_separator
from panformer.speech.model import DilatedDenseMemory, GatedFSMNBlock, MossFormerSeparator

TINY = dict(filters=16, kernel_size=16, dim=16, num_layers=1, chunk_size=32, query_key_dim=8,
            expansion_factor=2.0, fsmn_channels=8, fsmn_order=4, dropout=0.0)


@pytest.mark.parametrize("speakers", [2, 3])
@pytest.mark.parametrize("length", [1000, 1237, 7])
def test_output_shape_matches_input_length(speakers, length):
    model = MossFormerSeparator(num_speakers=speakers, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, length))
    assert out.shape == (2, speakers, length)
    assert torch.isfinite(out).all()


def test_mossformer_v1_has_no_fsmn_and_trains():
    model = MossFormerSeparator(**{**TINY, "fsmn_channels": None})
    assert not any(isinstance(m, GatedFSMNBlock) for m in model.modules())
    out = model(torch.randn(2, 400))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_paper_configurations_have_the_published_sizes():
    """MossFormer2 (24 layers, width 512): 55.7M parameters; MossFormer(L) without FSMN: 42.1M."""
    with torch.device("meta"):
        v2 = build_separator(MossFormer2Config(), num_speakers=2)
        v1 = build_separator(MossFormerConfig(), num_speakers=2)
    v2_params = sum(p.numel() for p in v2.parameters())
    v1_params = sum(p.numel() for p in v1.parameters())
    assert len(v2.masker.layers) == 24 and v2.masker.to_model.out_channels == 512
    assert v2_params / 1e6 == pytest.approx(55.7, abs=0.1)
    assert v1_params / 1e6 == pytest.approx(42.1, abs=0.1)


def test_fsmn_block_is_residual_and_shape_preserving():
    block = GatedFSMNBlock(24, channels=8, order=5, depth=2, dropout=0.0)
    x = torch.randn(2, 50, 24)
    assert block(x).shape == x.shape
    torch.nn.init.zeros_(block.expand.weight)
    torch.nn.init.zeros_(block.expand.bias)
    assert torch.equal(block(x), x)


def test_dilated_memory_keeps_channels_apart_and_reaches_its_receptive_field():
    torch.manual_seed(0)
    memory = DilatedDenseMemory(4, order=3, depth=2).eval()
    for norm in memory.norms:  # without instance norm the output is local: the reach can be checked
        norm.forward = lambda x: x
    x = torch.randn(1, 4, 64)
    poked = x.clone()
    poked[0, 2, 32] += 1.0
    changed = (memory(poked) - memory(x)).abs() > 1e-7
    assert changed[0, 2].any() and not changed[0, [0, 1, 3]].any()  # depthwise: channel 2 only
    # Kernel 2 * order - 1 = 5 at dilations 1 and 2: reach (order - 1) * (1 + 2) = 6 on each side.
    where = changed[0, 2].nonzero()[:, 0]
    assert where.min() >= 32 - 6 and where.max() <= 32 + 6
    assert where.min() < 32 - 2 and where.max() > 32 + 2  # the dilated layer reaches past the first
