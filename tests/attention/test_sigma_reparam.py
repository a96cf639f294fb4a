"""σReparam projections against the exact spectral norm: values, gradients, power iteration, the
Attention option and its checkpoints."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from shared_attention import Attention, SigmaReparamLinear
from tests.attention.conftest import assert_close


def exact(layer: SigmaReparamLinear, x: torch.Tensor) -> torch.Tensor:
    """The reference: gamma / sigma(W) * W with sigma from the SVD (differentiable through W)."""
    sigma = torch.linalg.matrix_norm(layer.weight, ord=2)
    return F.linear(x, layer.weight * (layer.gamma / sigma), layer.bias)


def grads_of(fn, layer, x, weight):
    params = [x, layer.weight, layer.bias, layer.gamma]
    return torch.autograd.grad((fn(x) * weight).sum(), params)


def test_starts_at_the_exact_spectral_norm_values_and_gradients():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(12, 20)
    with torch.no_grad():
        layer.gamma.fill_(1.7)  # a scale other than its start, so its gradient is checked too
    x = torch.randn(3, 5, 12, requires_grad=True)
    weight = torch.randn(3, 5, 20)
    layer.train()
    out = layer(x)
    assert_close(out, exact(layer, x))
    for g, r in zip(grads_of(layer, layer, x, weight), grads_of(lambda x: exact(layer, x), layer, x, weight), strict=True):
        assert_close(g, r)
    w = (layer.weight * (layer.gamma / torch.linalg.matrix_norm(layer.weight, ord=2))).detach()
    assert abs(float(torch.linalg.matrix_norm(w, ord=2)) - 1.7) < 1e-5  # W_hat's spectral norm is gamma


def test_power_iteration_tracks_a_changed_weight_one_step_per_training_forward():
    torch.manual_seed(1)
    layer = SigmaReparamLinear(16, 16, bias=False)
    with torch.no_grad():  # a new weight with a clear top singular value; u is now stale
        layer.weight.copy_(torch.randn(16, 16) + 3 * torch.outer(torch.randn(16), torch.randn(16)) / 16)
    target = float(torch.linalg.matrix_norm(layer.weight, ord=2))
    x = torch.randn(4, 16)
    layer.eval()
    u_before = layer.u.clone()
    layer(x)
    assert torch.equal(layer.u, u_before)  # evaluation does not iterate
    stale = float(layer.sigma())
    assert stale < target - 1e-2  # |W u| with a stale u underestimates sigma
    layer.train()
    estimates = []
    for _ in range(60):
        layer(x)
        estimates.append(float(torch.linalg.vector_norm(layer.weight @ layer.u)))
    assert estimates[0] > stale  # one step already moves toward the top singular vector
    assert abs(estimates[-1] - target) < 1e-4 * target
    assert all(b >= a - 1e-5 for a, b in itertools.pairwise(estimates))  # monotone, as power iteration
    # Converged: the training forward's gradient equals the exact one.
    xr = torch.randn(4, 16, requires_grad=True)
    weight = torch.randn(4, 16)
    params = [xr, layer.weight, layer.gamma]
    got = torch.autograd.grad((layer(xr) * weight).sum(), params)
    want = torch.autograd.grad((exact(layer, xr) * weight).sum(), params)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, atol=1e-4, rtol=1e-3)


def test_reset_u_restarts_at_the_new_weights_singular_vector():
    layer = SigmaReparamLinear(8, 6)
    with torch.no_grad():
        layer.weight.normal_()
    layer.reset_u()
    assert abs(float(layer.sigma()) - float(torch.linalg.matrix_norm(layer.weight, ord=2))) < 1e-5


def test_attention_option_reparametrises_every_projection_and_checkpoints():
    torch.manual_seed(2)
    layer = Attention(32, 4, num_kv_heads=2, sigma_reparam=True, qkv_bias=True)
    assert all(isinstance(p, SigmaReparamLinear) for p in (layer.q_proj, layer.kv_proj, layer.out_proj))
    plain = Attention(32, 4, num_kv_heads=2, qkv_bias=True)
    with torch.no_grad():  # the reference: plain projections holding gamma / sigma * W
        for name in ("q_proj", "kv_proj", "out_proj"):
            src = getattr(layer, name)
            src.gamma.fill_(0.5 + torch.rand(()).item())
            dst = getattr(plain, name)
            dst.weight.copy_(src.weight * src.gamma / torch.linalg.matrix_norm(src.weight, ord=2))
            dst.bias.copy_(src.bias)
    x = torch.randn(2, 10, 32)
    layer.eval()
    assert_close(layer(x), plain(x))
    state = layer.state_dict()
    assert {"q_proj.u", "q_proj.gamma", "kv_proj.u", "out_proj.gamma"} <= state.keys()
    restored = Attention(32, 4, num_kv_heads=2, sigma_reparam=True, qkv_bias=True).eval()
    restored.load_state_dict(state)
    assert torch.equal(restored(x), layer(x))


def test_sigma_reparam_bounds_the_logit_scale_a_plain_projection_does_not():
    """The paper's point: scaling W up (as a large learning rate does) leaves W_hat unchanged."""
    torch.manual_seed(3)
    layer = SigmaReparamLinear(8, 8)
    x = torch.randn(5, 8)
    layer.eval()
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(100.0)
    assert_close(layer(x), before)
    plain = torch.nn.Linear(8, 8)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
    assert plain(x).abs().max() > 10 * before.abs().max()
