"""The fused CUDA paths as the domains reach them: whole modules under bf16 autocast on a GPU (the MossFormer
gated layer, which casts its mixed fp32/bf16 inputs for ``panformer::local_global_attention``, and causal
differential self-attention, which dispatches to ``panformer::differential_attention``), against the same
module in fp32 on the CPU (the torch paths), outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from shared_attention import Attention, Causal, Differential
from shared_attention.variants.gated import GatedLocalGlobalAttention


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float().cpu() - expected).norm() / expected.norm())


def compare_under_autocast(module: torch.nn.Module, x: torch.Tensor, **kwargs) -> tuple[float, float, float]:
    """(output, input-gradient, parameter-gradient) relative errors of CUDA bf16 autocast vs CPU fp32."""
    reference = copy.deepcopy(module).float()
    x_ref = x.clone().requires_grad_(True)
    out_ref = reference(x_ref, **kwargs)
    out_ref.square().mean().backward()

    fast = copy.deepcopy(module).cuda()
    x_fast = x.cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast(x_fast, **kwargs)
    out.float().square().mean().backward()
    grads = [(p.grad, r.grad) for p, r in zip(fast.parameters(), reference.parameters(), strict=True) if r.grad is not None]
    param_error = max(relative_error(g, r) for g, r in grads)
    return relative_error(out, out_ref.detach()), relative_error(x_fast.grad, x_ref.grad), param_error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_gated_layer_under_autocast_matches_fp32(causal):
    torch.manual_seed(0)
    layer = GatedLocalGlobalAttention(256, chunk_size=64, query_key_dim=64, causal=causal, dropout=0.0).eval()
    x = torch.randn(2, 300, 256)  # 300: not a multiple of the chunk
    out_error, input_error, param_error = compare_under_autocast(layer, x)
    assert out_error < 3e-2, out_error
    assert input_error < 6e-2, input_error
    assert param_error < 1e-1, param_error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_causal_differential_self_attention_under_autocast_matches_fp32():
    torch.manual_seed(0)
    layer = Attention(256, 4, variant=Differential(layer_index=2))
    x = torch.randn(2, 333, 256)
    out_error, input_error, param_error = compare_under_autocast(layer, x, mask=Causal())
    assert out_error < 3e-2, out_error
    assert input_error < 6e-2, input_error
    assert param_error < 1e-1, param_error


def test_causal_gated_layer_trains_under_cpu_autocast_with_dropout():
    # With dropout on the weights the torch path runs (not the fused op): under autocast its scaled q/k are
    # fp32 and its values bf16, which the causal linear-attention op refuses unless cast to one dtype.
    torch.manual_seed(0)
    layer = GatedLocalGlobalAttention(32, chunk_size=8, query_key_dim=16, causal=True, dropout=0.1).train()
    x = torch.randn(2, 20, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all() and x.grad is not None and torch.isfinite(x.grad).all()
