"""Energy-and-force models: the graph-free coordinate transformer and the SchNet baseline.

Both predict a molecule's energy as per-element reference energies (fitted by least squares on the
training set) plus a learned per-atom part in units of `energy_scale` (the training set's force RMS
times 1 Å), and forces either conservatively, F = -dE/dx by autograd, or (coordinate
transformer only) from a direct per-atom head in units of `scale` (the training set's force RMS).

Legend: B molecules, N atoms (padded), D width, H heads, K radial basis functions.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_attention import Attention, Bias

MAX_Z = 118
ForceMode = Literal["direct", "conservative"]
CoordinateEmbedding = Literal["fourier", "random-fourier", "mlp", "linear"]


def centred(positions: Tensor, valid: Tensor) -> Tensor:
    """positions (B, N, 3) minus each molecule's centroid over its real atoms; padding set to 0."""
    weights = valid.unsqueeze(-1).to(positions.dtype)
    centre = (positions * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
    return (positions - centre) * weights


def _full(x: Tensor) -> Tensor:
    """Sum energies in fp32 at least (bf16 under autocast loses meV), keep fp64 when the model runs in it."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class EnergyModel(nn.Module):
    """Reference energies, the energy scale and the force path shared by every model here.

    Subclasses implement `features(numbers, positions, valid) -> (per-atom energy (B, N) in units of
    `energy_scale`, direct forces (B, N, 3) in units of `scale`, or None)`, so the networks see targets of
    order one. `energy_norm` (eV per molecule) only normalises the energy loss.
    """

    # True where energies are rotation invariant by construction: `frames.invariant_forward` then skips its frames.
    rotation_invariant: ClassVar[bool] = False

    def __init__(self, *, forces: ForceMode) -> None:
        super().__init__()
        self.force_mode = forces
        # Fitted by the task's fit_statistics on the training split (saved with the weights).
        self.register_buffer("element_energy", torch.zeros(MAX_Z + 1))
        self.register_buffer("scale", torch.ones(()))  # force scale, eV/Å
        self.register_buffer("energy_scale", torch.ones(()))  # eV per atom
        self.register_buffer("energy_norm", torch.ones(()))  # eV per molecule
        self._register_load_state_dict_pre_hook(self._fill_old_scales)

    def _fill_old_scales(self, state_dict, prefix, *args) -> None:
        # Checkpoints from before the energy scales existed used the force scale for both.
        for name in ("energy_scale", "energy_norm"):
            if prefix + "scale" in state_dict and prefix + name not in state_dict:
                state_dict[prefix + name] = state_dict[prefix + "scale"].clone()

    def features(self, numbers: Tensor, positions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, numbers: Tensor, positions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """numbers (B, N) long (0 = padding), positions (B, N, 3) Å, valid (B, N) bool
        -> energy (B,) eV, forces (B, N, 3) eV/Å (zero on padding)."""
        conservative = self.force_mode == "conservative"
        # Conservative forces need autograd even under the engine's torch.no_grad() evaluation.
        with torch.enable_grad() if conservative else contextlib.nullcontext():
            if conservative and not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            per_atom, direct = self.features(numbers, positions, valid)
            reference = self.element_energy[numbers] * valid
            energy = (_full(per_atom) * valid).sum(1) * self.energy_scale + reference.sum(1)
            if conservative:
                # create_graph only in training: the force loss then backpropagates through the gradient.
                (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training)
                forces = -grad
            else:
                assert direct is not None
                forces = _full(direct) * self.scale
        forces = forces * valid.unsqueeze(-1)
        if not self.training:
            energy, forces = energy.detach(), forces.detach()
        return energy, forces


# --- the coordinate transformer -----------------------------------------------------------------------


class FourierCoordinates(nn.Module):
    """xyz (B, N, 3) Å -> (B, N, D): raw coordinates plus sin/cos at wavelengths from 0.5 to 32 Å."""

    def __init__(self, dim: int, *, num_frequencies: int = 16, min_wavelength: float = 0.5,
                 max_wavelength: float = 32.0) -> None:
        super().__init__()
        wavelengths = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), num_frequencies)
        self.register_buffer("frequencies", 2 * math.pi / wavelengths, persistent=False)
        self.proj = nn.Linear(3 + 6 * num_frequencies, dim)

    def forward(self, xyz: Tensor) -> Tensor:
        angles = (xyz.unsqueeze(-1) * self.frequencies).flatten(-2)  # (B, N, 3F)
        return self.proj(torch.cat([xyz, angles.sin(), angles.cos()], dim=-1))


class RandomFourierCoordinates(nn.Module):
    """xyz (B, N, 3) Å -> (B, N, D): sin/cos of projections on F fixed random directions (isotropic, unlike
    the per-axis `FourierCoordinates`), with frequencies log-spread over wavelengths 0.5 to 32 Å."""

    def __init__(self, dim: int, *, num_features: int = 64, min_wavelength: float = 0.5,
                 max_wavelength: float = 32.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        directions = F.normalize(torch.randn(3, num_features, generator=generator), dim=0)
        wavelengths = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), num_features)
        # Saved with the weights (persistent), so a checkpoint does not depend on the generator.
        self.register_buffer("projection", directions * (2 * math.pi / wavelengths))
        self.proj = nn.Linear(3 + 2 * num_features, dim)

    def forward(self, xyz: Tensor) -> Tensor:
        angles = xyz @ self.projection  # (B, N, F)
        return self.proj(torch.cat([xyz, angles.sin(), angles.cos()], dim=-1))


def coordinate_embedding_module(kind: CoordinateEmbedding, dim: int) -> nn.Module:
    """The continuous embedding of centred xyz (B, N, 3) -> (B, N, D)."""
    if kind == "fourier":
        return FourierCoordinates(dim)
    if kind == "random-fourier":
        return RandomFourierCoordinates(dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(3, dim), nn.SiLU(), nn.Linear(dim, dim))
    return nn.Linear(3, dim)


class DistanceBias(nn.Module):
    """Pairwise distances -> an additive attention bias (B, H, N, N) from K Gaussian radial functions,
    mapped to one bias per head by a linear layer or (hidden > 0) a small MLP."""

    def __init__(self, num_heads: int, *, num_rbf: int = 16, cutoff: float = 8.0, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.width = cutoff / num_rbf
        last = nn.Linear(hidden or num_rbf, num_heads)
        nn.init.zeros_(last.weight)  # start as plain attention
        nn.init.zeros_(last.bias)
        self.proj = nn.Sequential(nn.Linear(num_rbf, hidden), nn.SiLU(), last) if hidden else last

    def forward(self, xyz: Tensor) -> Tensor:
        delta = xyz.unsqueeze(2) - xyz.unsqueeze(1)  # (B, N, N, 3)
        # sqrt(|d|^2 + eps): differentiable at d = 0 (the diagonal), which conservative forces need.
        distance = (delta.pow(2).sum(-1) + 1e-8).sqrt()
        rbf = torch.exp(-((distance.unsqueeze(-1) - self.centres) / self.width) ** 2)  # (B, N, N, K)
        return self.proj(rbf).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class DistanceBiasOptions:
    """The distance-bias ablation: K radial functions up to `cutoff` Å, an MLP of width `hidden` (0: linear)."""

    num_rbf: int = 16
    cutoff: float = 8.0
    hidden: int = 0


class Block(nn.Module):
    """Pre-norm transformer block over atoms: self-attention (shared_attention) and an MLP."""

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float, distance_bias: DistanceBiasOptions | None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.bias = (
            DistanceBias(num_heads, num_rbf=distance_bias.num_rbf, cutoff=distance_bias.cutoff,
                         hidden=distance_bias.hidden)
            if distance_bias is not None else None
        )

    def forward(self, x: Tensor, *, xyz: Tensor, valid: Tensor, backend: str) -> Tensor:
        score_mod = Bias(self.bias(xyz)) if self.bias is not None else None
        x = x + self.attn(self.norm1(x), key_padding_mask=valid, score_mod=score_mod, backend=backend)
        return x + self.mlp(self.norm2(x))


class CoordinateTransformer(EnergyModel):
    """The graph-free coordinate transformer: atom-type embedding + an embedding of centred xyz, then a
    plain transformer over all atoms (no graph, no cutoff, no positional encoding)."""

    def __init__(
        self,
        *,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        coordinate_embedding: CoordinateEmbedding = "fourier",
        distance_bias: bool | DistanceBiasOptions = False,
        forces: ForceMode = "direct",
    ) -> None:
        super().__init__(forces=forces)
        if distance_bias is True:
            distance_bias = DistanceBiasOptions()
        self.atom_embedding = nn.Embedding(MAX_Z + 1, dim, padding_idx=0)
        self.coordinates = coordinate_embedding_module(coordinate_embedding, dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, distance_bias=distance_bias or None) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.energy_head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        self.force_head = (
            nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 3)) if forces == "direct" else None
        )

    def features(self, numbers: Tensor, positions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor | None]:
        xyz = centred(positions, valid)
        x = self.atom_embedding(numbers) + self.coordinates(xyz)
        # Conservative training differentiates through the attention twice; only the reference
        # backend (plain autograd ops) has a double backward on every device.
        backend = "reference" if self.force_mode == "conservative" and self.training else "auto"
        for block in self.blocks:
            x = block(x, xyz=xyz, valid=valid, backend=backend)
        x = self.norm(x)
        per_atom = self.energy_head(x).squeeze(-1)
        direct = self.force_head(x) if self.force_head is not None else None
        return per_atom, direct


# --- SchNet (torch-geometric) -------------------------------------------------------------------------


def radius_pairs(positions: Tensor, batch: Tensor, *, cutoff: float) -> tuple[Tensor, Tensor]:
    """SchNet's interaction graph without torch-cluster: all pairs of one molecule closer than `cutoff`.

    positions (A, 3), batch (A,) -> edge_index (2, E), edge_weight (E,) distances (differentiable).
    """
    same = batch.unsqueeze(0) == batch.unsqueeze(1)
    same.fill_diagonal_(False)
    with torch.no_grad():
        close = torch.cdist(positions, positions) < cutoff
    row, col = (same & close).nonzero(as_tuple=True)
    return torch.stack([row, col]), (positions[row] - positions[col]).norm(dim=-1)


class SchNetModel(EnergyModel):
    """torch_geometric's SchNet on the same padded batches; forces conservative (-dE/dx)."""

    rotation_invariant = True  # interatomic distances only

    def __init__(
        self, *, hidden: int = 64, filters: int = 64, interactions: int = 3, gaussians: int = 25, cutoff: float = 5.0
    ) -> None:
        from torch_geometric.nn.models import SchNet

        super().__init__(forces="conservative")
        self.net = SchNet(
            hidden_channels=hidden, num_filters=filters, num_interactions=interactions, num_gaussians=gaussians,
            cutoff=cutoff, interaction_graph=partial(radius_pairs, cutoff=cutoff), readout="add",
        )

    def features(self, numbers: Tensor, positions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor | None]:
        batch = torch.arange(numbers.shape[0], device=numbers.device).repeat_interleave(valid.sum(1))
        energy = self.net(numbers[valid], positions[valid], batch)  # (B, 1), already summed over atoms
        # Put the molecule's energy on its first atom so the base class's sum over atoms returns it.
        per_atom = F.pad(energy, (0, numbers.shape[1] - 1))
        return per_atom, None


def random_rotations(
    count: int, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniformly random proper rotations (count, 3, 3) (QR of Gaussian matrices, signs fixed, det +1)."""
    gaussian = torch.randn(count, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q.to(device=device, dtype=dtype)
