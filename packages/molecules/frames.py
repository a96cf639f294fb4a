"""Rotation invariance at inference for models that are not invariant by construction (the coordinate
transformer): the model sees each molecule in a frame that turns with the molecule.

Modes (recipe field `model.invariance`, `predict --invariance`, `PanformerCalculator(invariance=...)`):

- `frames` (default): frame averaging over the principal axes. The axes of the centred positions' 3x3
  covariance are defined up to sign; the model runs once in each of the 4 right-handed sign choices
  (one batch of 4B) and energies are averaged, forces rotated back and averaged. The set of 4 frames turns
  with the molecule whatever signs the eigensolver returns, so energies are invariant and forces
  equivariant for ANY weights (up to float rounding). Cost: 4 forward passes.
- `canonical`: one principal-axes frame whose signs make the third moment of the positions along the two
  major axes positive. One pass, but a molecule with a ~0 third moment along an axis (without being
  symmetric about it) can flip under rounding, so invariance is not guaranteed for every input.
- `none`: the raw model.

Degenerate eigenvalues (symmetric tops: methane, benzene; linear molecules): the principal axes inside a
degenerate plane are arbitrary, so when two eigenvalues are closer than `DEGENERATE_GAP` (relative) the
frames come from atoms instead: axis 1 towards an atom farthest from the centroid, axis 2 towards an atom
farthest from axis 1, averaged over every atom tied for farthest (within `TIE`), so that the frames of a
symmetric molecule map onto each other under its symmetries and direct forces stay equivariant as well.
A linear molecule keeps only the force along its axis (the average over turns about it); a lone atom gets
none. On the NCI data the smallest relative gap is 5e-3 (float64 eigenvectors stable to ~1e-7 / gap), so
ordinary conformers use the principal axes, which unlike atom frames do not hinge on near-ties between atoms.

Forces: direct forces are predicted in the frame and rotated back; conservative forces are -dE/dx of the
averaged energy through the frame itself (eigh and the atom frame are differentiable), so they stay exact
gradients and are equivariant because the energy is invariant.

Legend: B molecules, N atoms (padded), V views (one per molecule and frame: 4B for `frames`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from panformer.engine.errors import UserError
from panformer.molecules.model import EnergyModel, centred

Invariance = Literal["frames", "canonical", "none"]
INVARIANCE_MODES: tuple[str, ...] = get_args(Invariance)
DEGENERATE_GAP = 1e-3  # relative eigenvalue gap below which the principal axes are not trusted
TIE = 1e-4  # Å: atoms this close to the farthest distance tie for anchoring an atom frame
# The right-handed sign choices of an axis frame: identity and the half turns about each axis.
SIGN_FLIPS = ((1.0, 1.0, 1.0), (1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0))


def check_invariance(mode: str, *, where: str) -> Invariance:
    """`mode` if it is a known invariance mode, else a UserError naming `where` (an option or field)."""
    if mode not in INVARIANCE_MODES:
        raise UserError(f"{where}: unknown invariance mode {mode!r}; use one of {', '.join(INVARIANCE_MODES)}")
    return mode  # type: ignore[return-value]


def _right_handed(first: Tensor, second: Tensor) -> Tensor:
    """Unit axes (..., 3) x2 -> frames (..., 3, 3) whose rows are first, second and their cross product."""
    return torch.stack([first, second, torch.linalg.cross(first, second)], dim=-2)


def _unit(v: Tensor, fallback: Tensor) -> Tensor:
    """v (..., 3) normalised, or `fallback` where v is too short to have a direction."""
    return F.normalize(torch.where(v.norm(dim=-1, keepdim=True) < 1e-6, fallback, v), dim=-1)


def _tied_with_max(values: Tensor) -> list[int]:
    """Indices of `values` (n,) within `TIE` of their maximum."""
    return (values >= values.max() - TIE).nonzero().flatten().tolist()


def atom_frames(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Every atom-anchored frame (P, 3, 3) of one molecule's centred real atoms x (n, 3), and for a linear
    molecule its axis (3,) (zero for a single atom: no direction at all), else None. Axis 1 points at an atom farthest from the centroid, axis 2 at an atom farthest from
    axis 1; atoms tied for farthest (within `TIE`) each give a frame, so that a symmetric molecule's frames
    turn into each other under its symmetries and averaging over them keeps direct forces equivariant too.
    A linear molecule (or a single atom) has no atom off axis 1: an arbitrary perpendicular axis 2, harmless
    since every coordinate off axis 1 is then zero."""
    basis = torch.eye(3, dtype=x.dtype, device=x.device)
    frames = []
    with torch.no_grad():  # which atoms anchor the frame is a discrete choice
        radius = x.norm(dim=-1)
        firsts = _tied_with_max(radius)
    for i in firsts:
        first = _unit(x[i], basis[0])
        off_axis = x - (x @ first).unsqueeze(-1) * first  # (n, 3)
        with torch.no_grad():
            distance = off_axis.norm(dim=-1)
            linear = bool(distance.max() < TIE)
            least_aligned = basis[first.abs().argmin()]  # a coordinate axis not parallel to axis 1
        seconds = [int(distance.argmax())] if linear else _tied_with_max(distance)
        for j in seconds:
            second = off_axis[j] if not linear else torch.zeros_like(first)
            frames.append(_right_handed(first, _unit(second, torch.linalg.cross(first, least_aligned))))
    frames = torch.stack(frames)
    if not linear:
        return frames, None
    return frames, frames[0, 0].detach() if radius.max() >= TIE else torch.zeros_like(frames[0, 0])


def principal_frame(x: Tensor) -> tuple[Tensor, Tensor]:
    """Right-handed frames (B, 3, 3) of centred positions x (B, N, 3; padding rows zero), rows = principal
    axes by decreasing spread, signs arbitrary; and which molecules (B,) have degenerate eigenvalues (their
    frame is then meaningless and must not be used)."""
    covariance = x.transpose(1, 2) @ x  # (B, 3, 3)
    with torch.no_grad():
        eigenvalues = torch.linalg.eigvalsh(covariance)  # ascending
        gap = eigenvalues.diff(dim=-1).min(-1).values / eigenvalues[:, -1].clamp(min=1e-12)
        degenerate = gap < DEGENERATE_GAP
    # eigh's backward divides by eigenvalue gaps: degenerate molecules hand it a fixed matrix instead.
    fixed = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype, device=x.device))
    _, vectors = torch.linalg.eigh(torch.where(degenerate[:, None, None], fixed, covariance))  # columns, ascending
    return _right_handed(vectors[..., 2], vectors[..., 1]), degenerate


@dataclass
class Views:
    """The frames the model runs in: frames (V, 3, 3), owner (V,) the molecule of each, and linear (B,)
    molecules with their axis (B, 3), whose forces are kept along the axis: the average over all turns
    about it, their symmetry (a single atom: axis zero, forces zero)."""

    frames: Tensor
    owner: Tensor
    linear: Tensor
    axis: Tensor


def molecule_views(x: Tensor, valid: Tensor, mode: Invariance) -> Views:
    """The frames of every molecule of centred positions x (B, N, 3): the 4 sign choices of its principal
    axes (`frames`) or one signed frame (`canonical`); every atom-anchored frame where the principal axes
    are degenerate (a handful of molecules, looped over)."""
    frame, degenerate = principal_frame(x)
    if mode == "canonical":
        with torch.no_grad():
            third_moment = (x @ frame.transpose(1, 2)).pow(3).sum(1)  # (B, 3)
            sign = torch.where(third_moment[:, :2] >= 0, 1.0, -1.0).to(x.dtype)
        per_molecule = _right_handed(frame[:, 0] * sign[:, :1], frame[:, 1] * sign[:, 1:]).unsqueeze(1)
    else:
        flips = torch.tensor(SIGN_FLIPS, dtype=x.dtype, device=x.device)  # (4, 3)
        per_molecule = flips[None, :, :, None] * frame.unsqueeze(1)  # (B, 4, 3, 3)
    regular = (~degenerate).nonzero().flatten()
    frames = [per_molecule[regular].flatten(0, 1)]
    owners = [regular.repeat_interleave(per_molecule.shape[1])]
    linear = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    axis = torch.zeros(len(x), 3, dtype=x.dtype, device=x.device)
    for b in degenerate.nonzero().flatten().tolist():
        tied, line = atom_frames(x[b, valid[b]])
        if line is not None:
            linear[b], axis[b] = True, line
        frames.append(tied)
        owners.append(torch.full((len(tied),), b, device=x.device))
    return Views(torch.cat(frames), torch.cat(owners), linear, axis)


def invariant_forward(
    model: EnergyModel, numbers: Tensor, positions: Tensor, valid: Tensor, *, mode: Invariance
) -> tuple[Tensor, Tensor]:
    """The model's energy (B,) eV and forces (B, N, 3) eV/Å, made rotation invariant / equivariant by
    `mode`: the mean over the molecule's frames (see the module docstring). Models invariant by construction
    (SchNet) and mode `none` run as they are. Inference only (the results are detached)."""
    if mode == "none" or model.rotation_invariant:
        return model(numbers, positions, valid)
    conservative = model.force_mode == "conservative"
    with torch.enable_grad() if conservative else contextlib.nullcontext():
        if conservative:
            positions = positions.detach().requires_grad_(True)
        # Frames in float64: eigenvectors of a float32 covariance would carry ~1e-7 / gap of noise.
        x = centred(positions.double(), valid)
        views = molecule_views(x, valid, mode)
        owner = views.owner
        inside = (x[owner] @ views.frames.transpose(1, 2)).to(positions.dtype)  # (V, N, 3)
        energies, forces = model(numbers[owner], inside, valid[owner])
        share = 1.0 / torch.bincount(owner, minlength=len(numbers)).to(energies.dtype)  # (B,) 1 / frames
        energy = torch.zeros_like(share).index_add(0, owner, energies * share[owner])
        if conservative:
            # The model's forces are -dE/d(inside); carry them back to the input positions through the frames.
            (forces,) = torch.autograd.grad(inside, positions, grad_outputs=forces * share[owner, None, None])
        else:
            # Rotated back to the input's axes, in float64 (a bf16 autocast matmul would round to 1e-3).
            back = (forces.double() @ views.frames).to(forces.dtype)
            forces = torch.zeros_like(positions).index_add(0, owner, back * share[owner, None, None])
        axis = views.axis.to(forces.dtype).unsqueeze(1)  # (B, 1, 3)
        along = (forces * axis).sum(-1, keepdim=True) * axis
        forces = torch.where(views.linear[:, None, None], along, forces)
    return energy.detach(), (forces * valid.unsqueeze(-1)).detach()


__all__ = ["INVARIANCE_MODES", "Invariance", "Views", "atom_frames", "check_invariance", "invariant_forward",
           "molecule_views", "principal_frame"]
