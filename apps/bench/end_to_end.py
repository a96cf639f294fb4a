"""End to end: our domain models next to the public reference implementations, same size, batch and input.

For each domain with a public reference, the bench builds OUR model with the domain's own builder (a recipe
of ours, overridden to the reference's published configuration) and THE PEER's model from the peer's own,
unmodified repository files (a folder given by ``--peers``: nothing of theirs is part of this project), and
times both in one run, on the same synthetic tensors:

- training throughput, samples/s: forward + loss + backward + AdamW step (bf16 autocast on CUDA, except where
  the recipe trains in fp32: molecules); ours with the engine's optimizer (fused AdamW on CUDA), theirs with
  PyTorch's default AdamW (the multi-tensor one), as their own training scripts use;
- inference latency, ms: one forward pass without gradients, at batch 1 and at the training batch;
- with ``--compile [a,b]``, both models again under ``torch.compile``, in a second pass once every domain's
  eager rows are written (compilation happens in the warm-up calls); a peer that fails to compile keeps its
  eager timing in that row, marked, and the failure is noted;
- with ``--cuda-graphs`` (CUDA), our training step also as ``train.cuda_graphs`` runs it, replayed from a CUDA
  graph, in a row of its own against their eager step;
- with ``--profile STEPS``, where each eager training step's time goes (``step_profile.py``): the share of it the
  GPU is busy, kernel launches, and kernel time by kind (attention, matrix products, optimizer, norms, the rest).

Domains without a public reference implementation of our model (sign, molecules) get rows of ours alone,
theirs "–". A contender that fails (e.g. FlexAttention's missing CPU backward) gets "–" and a note.

Contenders are timed round-robin, the order rotating every round, and each cell is a median. Ratios are
"ours over theirs" in speed (their time / our time): above 1, ours is faster. Parameter counts of both are
reported; a pair differing by more than 10% is flagged.

| domain | ours | reference (peer folder under --peers) |
|---|---|---|
| graphs | GPS transformer (recipe triangles, resized) | PyG examples/graph_gps.py `GPS` (pytorch_geometric/) |
| timeseries | PatchTST-like forecaster (recipe forecast-airline, resized) | Time-Series-Library models/PatchTST.py (Time-Series-Library/) |
| sign | TSLFormer-style frame transformer (recipe tslformer) | – (none public) |
| molecules | coordinate transformer (recipe coordformer) | – (none public) |
| relational | Relational Transformer (recipe database, resized, full attention off) | rishabh-ranjan/relational-transformer src/rt/model/net.py `RelationalTransformer`, RT-J dimensions (relational-transformer/) |
| music | MMT (recipe mmt) | salu133445/mmt MusicXTransformer on x-transformers 0.25.9 (mmt/) |
| speech | MossFormer2 (recipe libri2mix) | ClearerVoice-Studio MossFormer2_SS_16K (ClearerVoice-Studio/) |

What goes under ``--peers`` (each repository's own files and layout, as cloned; measured at these commits):

- pytorch_geometric/examples/graph_gps.py (pyg-team/pytorch_geometric 5c6461b2);
- Time-Series-Library/{models,layers,utils}/__init__.py, models/PatchTST.py, layers/SelfAttention_Family.py,
  layers/Embed.py, layers/Transformer_EncDec.py, utils/masking.py (thuml/Time-Series-Library 4e938a17);
- ClearerVoice-Studio/clearvoice/clearvoice/models/mossformer2_ss/*.py (modelscope/ClearerVoice-Studio 6b3774dc);
- mmt/mmt/{music_x_transformers,representation,utils}.py (salu133445/mmt 87a8e261);
- relational-transformer/src/rt/model/net.py (rishabh-ranjan/relational-transformer 7aa1616f; the folders
  without their __init__.py files, which would import the whole training stack: namespace packages).

Peers need einops, rotary-embedding-torch 0.8.3 and torchinfo 1.8.0 (speech), x-transformers 0.25.9 + entmax
1.3 (music, the version its environment.yml pins) and einops (relational) importable. Imports the peers make
but the timed code never uses are stubbed in ``sys.modules`` at import time (listed in the report); the graphs
example runs its dataset download and training loop at import, so only its import statements and class
definitions are executed.

    python apps/bench/end_to_end.py --peers .peers --out end-to-end-h200.md    # every domain, eager
    # some domains, eager then both sides under torch.compile:
    python apps/bench/end_to_end.py --peers .peers --domain relational --domain sign --compile --out new.md
    python apps/bench/end_to_end.py --peers .peers --domain timeseries --profile 5 --out prof.md  # where steps go
    python apps/bench/end_to_end.py --peers .peers --device cpu --tiny          # a wiring check, any machine
    python apps/bench/end_to_end.py --peers .peers --device cpu --params-only   # parameter counts at full size
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import shlex
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hardware import cpu_name  # apps/bench/hardware.py: run as a script, this folder is on sys.path
from step_profile import profile_step
from torch import Tensor, nn

from panformer.engine.config import load_recipe
from panformer.engine.cuda_graphs import GraphedTrainStep
from panformer.engine.trainer import autocast

DOMAINS = ("graphs", "timeseries", "sign", "molecules", "relational", "music", "speech")  # the largest last


# --- what a domain hands to the timer ----------------------------------------------------------


@dataclass
class Contender:
    """One model with its training loss and its inference call, each on a prepared batch."""

    model: nn.Module
    loss: Callable[[nn.Module, Any], Tensor]  # (model, batch) -> scalar loss
    infer: Callable[[nn.Module, Any], Any]  # (model, batch) -> outputs (called without gradients)
    train_batch: Any  # the training batch (B samples)
    infer_batches: dict[int, Any]  # inference batches by size (1 and B)


@dataclass
class Pair:
    domain: str
    config: str  # the shared configuration, in words
    batch: int
    ours: Contender
    theirs: Contender | None  # None: no public reference implementation, a row of ours alone
    notes: list[str] = field(default_factory=list)  # stubs, differences in features
    # Further timed calls, label -> (ours, theirs), e.g. music generation (eager pass only, fp32).
    extras: dict[str, tuple[Callable[[], object], Callable[[], object]]] = field(default_factory=dict)
    mixed_precision: bool = True  # bf16 autocast on CUDA; False where the recipe trains in fp32


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- loading peers from their own files ----------------------------------------------------------


def stub_module(name: str, **attributes: Any) -> types.ModuleType:
    """A stand-in for a module a peer imports but the timed code never calls; any other use fails loudly."""

    module = types.ModuleType(name)
    module.__dict__.update(attributes)

    def missing(attr: str) -> Any:
        raise AttributeError(f"{name}.{attr}: {name} is stubbed by apps/bench/end_to_end.py (not needed for timing)")

    module.__getattr__ = missing  # type: ignore[method-assign]
    return module


def stub_class(qualified: str) -> type:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ImportError(f"{qualified} is stubbed by apps/bench/end_to_end.py (not needed for timing)")

    return type(qualified.rsplit(".", 1)[-1], (), {"__init__": refuse})


@contextlib.contextmanager
def peer_imports(root: Path, stubs: dict[str, types.ModuleType] | None = None) -> Iterator[None]:
    """Import a peer's modules from its own folder (top-level names such as `utils` or `models`), then forget
    them again, so that two peers with the same module names do not collide; the loaded classes keep working."""
    stubs, root = stubs or {}, root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: peer source missing (see apps/bench/end_to_end.py for what goes there)")
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)
    try:
        yield
    finally:
        # Decide first, delete after: a namespace package's __path__ is recomputed from its parent's.
        doomed = [name for name in set(sys.modules) - before if name in stubs or any(
            str(place).startswith(str(root)) for place in _places(sys.modules[name]))]
        sys.path.remove(str(root))
        for name in doomed:
            _FORGOTTEN[name] = sys.modules.pop(name)


# The peer modules forgotten while the current domain was built: put back while it is timed, since
# torch.compile re-imports a traced function's module by name.
_FORGOTTEN: dict[str, types.ModuleType] = {}


@contextlib.contextmanager
def peer_modules_restored() -> Iterator[None]:
    """The current domain's forgotten peer modules back in sys.modules (and gone again after)."""
    added = {name: module for name, module in _FORGOTTEN.items() if name not in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _places(module: types.ModuleType) -> list[str]:
    """Where a module was loaded from: its file and, for a package, its folders."""
    return [getattr(module, "__file__", None) or "", *(getattr(module, "__path__", None) or [])]


def definitions_only(path: Path, name: str) -> types.ModuleType:
    """A module from a script's import statements and class definitions alone (its top-level code, e.g. a
    dataset download and a training loop, is not run). The file itself is read unmodified."""
    tree = ast.parse(path.read_text(), filename=str(path))
    tree.body = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.ClassDef)]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


# --- graphs: our GPS transformer vs PyG's GPS example -------------------------------------------


def random_graphs(batch: int, *, min_nodes: int, max_nodes: int, atom_types: int, bond_types: int,
                  pe_steps: int, generator: torch.Generator) -> list[dict[str, Tensor]]:
    """Molecule-like random graphs (a random tree plus ~10% extra edges, both directions), ZINC-sized."""
    graphs = []
    for _ in range(batch):
        n = int(torch.randint(min_nodes, max_nodes + 1, (1,), generator=generator))
        parents = [int(torch.randint(0, i, (1,), generator=generator)) for i in range(1, n)]
        pairs = list(zip(range(1, n), parents, strict=True))
        extra = max(1, n // 10)
        ends = torch.randint(0, n, (extra, 2), generator=generator).tolist()
        pairs += [(a, b) for a, b in ends if a != b]
        src, dst = torch.tensor(pairs, dtype=torch.long).T
        bonds = torch.randint(0, bond_types, (len(pairs),), generator=generator)
        graphs.append({
            "atoms": torch.randint(0, atom_types, (n,), generator=generator),
            "pe": torch.rand(n, pe_steps, generator=generator),
            "edge_index": torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1),
            "bonds": torch.cat([bonds, bonds]),
            "target": torch.randn((), generator=generator),
        })
    return graphs


def pyg_batch(graphs: list[dict[str, Tensor]], device: torch.device) -> dict[str, Tensor]:
    """Concatenated nodes with a `batch` vector (PyG's layout)."""
    offsets = torch.tensor([0] + [g["atoms"].shape[0] for g in graphs]).cumsum(0)
    return {
        "x": torch.cat([g["atoms"] for g in graphs])[:, None].to(device),
        "pe": torch.cat([g["pe"] for g in graphs]).to(device),
        "edge_index": torch.cat([g["edge_index"] + o for g, o in zip(graphs, offsets, strict=False)], 1).to(device),
        "edge_attr": torch.cat([g["bonds"] for g in graphs]).to(device),
        "batch": torch.cat([torch.full((g["atoms"].shape[0],), i) for i, g in enumerate(graphs)]).to(device),
        "y": torch.stack([g["target"] for g in graphs]).to(device),
    }


def padded_batch(graphs: list[dict[str, Tensor]], atom_types: int, device: torch.device) -> dict[str, Tensor]:
    """The same graphs in our layout (panformer.graphs.data.collate): padded (B, N, ...) with one-hot atoms."""
    width = max(g["atoms"].shape[0] for g in graphs)
    batch = len(graphs)
    x = torch.zeros(batch, width, atom_types)
    walk = torch.zeros(batch, width, graphs[0]["pe"].shape[1])
    valid = torch.zeros(batch, width, dtype=torch.bool)
    edges = []
    for b, g in enumerate(graphs):
        n = g["atoms"].shape[0]
        x[b, :n] = nn.functional.one_hot(g["atoms"], atom_types).float()
        walk[b, :n], valid[b, :n] = g["pe"], True
        edges.append(g["edge_index"] + b * width)
    out = {"x": x, "walk": walk, "lap": torch.zeros(batch, width, 0), "valid": valid,
           "edge_index": torch.cat(edges, 1), "target": torch.stack([g["target"] for g in graphs])}
    return {k: v.to(device) for k, v in out.items()}


def graphs_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.graphs.domain import GraphsDomain
    from panformer.graphs.static import build_static_model

    # examples/graph_gps.py: GPS(channels=64, pe_dim=8, num_layers=10, heads 4, multihead attention with
    # dropout 0.5), ZINC (28 atom types, 4 bond types), random-walk PE of 20 steps, batch 32.
    dim, depth, steps, batch = (16, 2, 20, 4) if args.tiny else (64, 10, 20, 32)
    atom_types, bond_types = 28, 4
    nodes = (5, 10) if args.tiny else (15, 35)
    batch = args.batch or batch

    peer = definitions_only(args.peers / "pytorch_geometric" / "examples" / "graph_gps.py", "peer_graph_gps")
    theirs = peer.GPS(channels=dim, pe_dim=8 if dim > 8 else 4, num_layers=depth, attn_type="multihead",
                      attn_kwargs={"dropout": 0.5}).to(device)

    recipe = load_recipe(GraphsDomain().recipe_type_for, "graphs", "triangles", overrides=[
        f"model.dim={dim}", f"model.depth={depth}", "model.num_heads=4",
        "data.lap_pe=0", f"data.walk_steps={steps}", "data.max_distance=0",
    ])
    info = {"task": "graph-regression", "level": "graph", "features": atom_types, "lap_pe": 0,
            "walk_steps": steps, "max_distance": 0}
    ours = build_static_model(recipe.model, info).to(device)

    g = torch.Generator().manual_seed(0)
    graphs = random_graphs(batch, min_nodes=nodes[0], max_nodes=nodes[1], atom_types=atom_types,
                           bond_types=bond_types, pe_steps=steps, generator=g)

    def their_out(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return model(b["x"], b["pe"], b["edge_index"], b["edge_attr"], b["batch"]).squeeze(-1)

    def our_out(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return model(b).squeeze(-1)

    sizes = sorted({1, batch})
    return Pair(
        "graphs",
        f"GPS, width {dim}, {depth} layers, 4 heads, GIN(E) local + full attention, RW-PE {steps}; "
        f"random molecule-like graphs of {nodes[0]}-{nodes[1]} nodes; L1 loss",
        batch,
        ours=Contender(ours, lambda net, b: (our_out(net, b).float() - b["target"]).abs().mean(), our_out,
                       padded_batch(graphs, atom_types, device),
                       {s: padded_batch(graphs[:s], atom_types, device) for s in sizes}),
        theirs=Contender(theirs, lambda net, b: (their_out(net, b).float() - b["y"]).abs().mean(), their_out,
                         pyg_batch(graphs, device), {s: pyg_batch(graphs[:s], device) for s in sizes}),
        notes=["graphs: theirs embeds bond types (GINEConv) and sum-pools; ours has no edge features (GIN) and "
               "mean-pools; our shortest-path bias and Laplacian PE are off (max_distance=0, lap_pe=0) to "
               "match the example's inputs. Only the example's imports and class definitions are executed."],
    )


# --- timeseries: our PatchTST-like forecaster vs Time-Series-Library's PatchTST -------------------


def timeseries_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.timeseries.domain import TimeSeriesDomain

    # Time-Series-Library scripts/long_term_forecast/Weather_script/PatchTST.sh (96 -> 96) with run.py's
    # defaults: d_model 512, d_ff 2048, e_layers 2, n_heads 4, 21 variables, patch 16, stride 8, batch 32.
    if args.tiny:
        dim, ff, layers, heads, seq, pred, variables, patch, stride, batch = 32, 64, 1, 2, 32, 8, 3, 8, 4, 4
    else:
        dim, ff, layers, heads, seq, pred, variables, patch, stride, batch = 512, 2048, 2, 4, 96, 96, 21, 16, 8, 32
    batch = args.batch or batch

    stubs = {"reformer_pytorch": stub_module("reformer_pytorch",
                                             LSHSelfAttention=stub_class("reformer_pytorch.LSHSelfAttention"))}
    with peer_imports(args.peers / "Time-Series-Library", stubs):
        from models.PatchTST import Model as TSLibPatchTST  # type: ignore[import-not-found]

    configs = types.SimpleNamespace(task_name="long_term_forecast", seq_len=seq, pred_len=pred, d_model=dim,
                                    dropout=0.1, factor=3, n_heads=heads, d_ff=ff, activation="gelu",
                                    e_layers=layers, enc_in=variables)
    theirs = TSLibPatchTST(configs, patch_len=patch, stride=stride).to(device)

    domain = TimeSeriesDomain()
    recipe = load_recipe(domain.recipe_type_for, "timeseries", "forecast-airline", overrides=[
        f"data.context={seq}", f"data.horizon={pred}", "model.quantiles=[]", f"model.patch={patch}",
        f"model.stride={stride}", f"model.dim={dim}", f"model.depth={layers}", f"model.num_heads={heads}",
        f"model.mlp_ratio={ff / dim}", "model.dropout=0.1",
    ])
    info = {"variables": [f"v{i}" for i in range(variables)], "context": seq, "horizon": pred, "quantiles": [],
            "mean": [0.0] * variables, "std": [1.0] * variables}
    ours = domain.task(recipe).build_model(recipe, info).to(device)

    g = torch.Generator().manual_seed(0)
    series = torch.randn(batch, seq + pred, variables, generator=g).cumsum(1)  # random walks, (B, L + H, C)
    context, target = series[:, :seq], series[:, seq:]

    def theirs_batch(n: int) -> tuple[Tensor, Tensor]:
        return context[:n].to(device), target[:n].to(device)  # (B, L, C), (B, H, C)

    def ours_batch(n: int) -> tuple[Tensor, Tensor]:
        return context[:n].transpose(1, 2).contiguous().to(device), target[:n].transpose(1, 2).contiguous().to(device)

    def their_out(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return model(b[0], None, None, None)

    def our_out(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return model(b[0])[..., 0]

    sizes = sorted({1, batch})
    return Pair(
        "timeseries",
        f"PatchTST, {seq} -> {pred} steps, {variables} variables, patch {patch} / stride {stride}, width {dim}, "
        f"FFN {ff}, {layers} layers, {heads} heads; random walks; MSE loss",
        batch,
        ours=Contender(ours, lambda net, b: nn.functional.mse_loss(our_out(net, b).float(), b[1]), our_out,
                       ours_batch(batch), {s: ours_batch(s) for s in sizes}),
        theirs=Contender(theirs, lambda net, b: nn.functional.mse_loss(their_out(net, b).float(), b[1]), their_out,
                         theirs_batch(batch), {s: theirs_batch(s) for s in sizes}),
        notes=["timeseries: Time-Series-Library's layers/SelfAttention_Family.py imports reformer_pytorch "
               "(LSH attention, unused by PatchTST): stubbed in sys.modules. Theirs: BatchNorm, sinusoidal "
               "positions; ours: LayerNorm, learned positions, training-set scaler + RevIN."],
    )


# --- speech: our MossFormer2 vs ClearerVoice-Studio's MossFormer2_SS_16K ---------------------------


def speech_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.speech.domain import SpeechDomain, build_separator
    from panformer.speech.loss import pit_si_snr_loss

    recipe = load_recipe(SpeechDomain().recipe_type_for, "speech", "libri2mix",
                         overrides=["model.num_layers=2", "model.dim=64", "model.filters=64"] if args.tiny else [])
    cfg = recipe.model
    rate, seconds, batch = 8000, (0.5 if args.tiny else recipe.data.segment_seconds), recipe.train.batch_size
    batch = args.batch or (2 if args.tiny else batch)
    speakers = recipe.data.num_speakers

    root = args.peers / "ClearerVoice-Studio" / "clearvoice" / "clearvoice" / "models"
    with peer_imports(root):
        from mossformer2_ss.mossformer2 import MossFormer2_SS_16K  # type: ignore[import-not-found]
    their_args = types.SimpleNamespace(encoder_embedding_dim=cfg.filters, mossformer_sequence_dim=cfg.dim,
                                       num_mossformer_layer=cfg.num_layers, encoder_kernel_size=cfg.kernel_size,
                                       num_spks=speakers)
    theirs = MossFormer2_SS_16K(their_args).to(device)
    ours = build_separator(cfg, num_speakers=speakers).to(device)

    g = torch.Generator().manual_seed(0)
    samples = int(rate * seconds)
    sources = torch.randn(batch, speakers, samples, generator=g) * 0.1
    mixture = sources.sum(1)

    def make(n: int) -> tuple[Tensor, Tensor]:
        return mixture[:n].to(device), sources[:n].to(device)

    def their_out(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return torch.stack(model(b[0]), dim=1)  # list of S (B, T) -> (B, S, T)

    def our_out(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return model(b[0])

    def loss_of(out: Callable[[nn.Module, Any], Tensor]) -> Callable[[nn.Module, Any], Tensor]:
        return lambda net, b: pit_si_snr_loss(out(net, b).float(), b[1])[0]

    sizes = sorted({1, batch})
    return Pair(
        "speech",
        f"MossFormer2 (recipe libri2mix): {cfg.filters} filters, kernel {cfg.kernel_size}, width {cfg.dim}, "
        f"{cfg.num_layers} layers, chunk {cfg.chunk_size}; {speakers} speakers, {seconds:g} s at {rate} Hz; "
        "PIT SI-SNR loss",
        batch,
        ours=Contender(ours, loss_of(our_out), our_out, make(batch), {s: make(s) for s in sizes}),
        theirs=Contender(theirs, loss_of(their_out), their_out, make(batch), {s: make(s) for s in sizes}),
        notes=["speech: ClearerVoice-Studio's MossFormer2_SS_16K wrapper, built with our recipe's filters, width, "
               "layers and kernel; its internal chunk size (256), query/key width (128) and FSMN sizes are its "
               "own defaults. Needs einops, rotary-embedding-torch 0.8.3 and torchinfo 1.8.0 (wheels)."],
    )


# --- music: our MMT vs salu133445/mmt on x-transformers --------------------------------------------


def music_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.music.domain import MusicDomain, MusicTask, build_model
    from panformer.music.generate import generate
    from panformer.music.representation import EOS, INSTRUMENT_EVENT, NOTE, SON, SOS, Vocabulary

    overrides = ["model.dim=32", "model.depth=1", "model.num_heads=2", "data.max_len=64"] if args.tiny else []
    recipe = load_recipe(MusicDomain().recipe_type_for, "music", "mmt", overrides=overrides)
    m, length, max_beat = recipe.model, recipe.data.max_len, recipe.data.max_beat
    batch = args.batch or (2 if args.tiny else recipe.train.batch_size)

    stubs = {"muspy": stub_module("muspy"), "pretty_midi": stub_module("pretty_midi")}
    with peer_imports(args.peers / "mmt" / "mmt", stubs):
        import music_x_transformers  # type: ignore[import-not-found]
        import representation  # type: ignore[import-not-found]
    encoding = representation.get_encoding()
    # mmt/train.py: MusicXTransformer(dim, depth=layers, heads, max_seq_len, max_beat, rotary_pos_emb=False,
    # use_abs_pos_emb=True, emb/attn/ff dropout = dropout).
    theirs = music_x_transformers.MusicXTransformer(
        dim=m.dim, encoding=encoding, depth=m.depth, heads=m.num_heads, max_seq_len=length, max_beat=max_beat,
        rotary_pos_emb=m.position == "rope", use_abs_pos_emb=m.position == "learned", emb_dropout=m.dropout,
        attn_dropout=m.dropout, ff_dropout=m.dropout, attn_dim_head=m.dim // m.num_heads,  # 64 (its default) at 512/8
    ).to(device)
    info = {"vocab_sizes": list(Vocabulary(max_beat).sizes), "max_len": length}
    ours = build_model(recipe, info).to(device)
    task = MusicTask(recipe)

    their_sizes = list(encoding["n_tokens"])
    their_sizes[encoding["dimensions"].index("beat")] = max_beat + 1
    sizes_common = [min(a, b) for a, b in zip(info["vocab_sizes"], their_sizes, strict=True)]
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(1, v, (batch, length), generator=g) for v in sizes_common], dim=-1)

    def make(n: int) -> dict[str, Tensor]:
        return {"codes": codes[:n].to(device), "valid": torch.ones(n, length, dtype=torch.bool, device=device)}

    def their_loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return model(b["codes"], mask=b["valid"])

    def their_out(model: nn.Module, b: dict[str, Tensor]) -> Any:
        return model.decoder.net(b["codes"][:, :-1], mask=b["valid"][:, :-1])

    def our_out(model: nn.Module, b: dict[str, Tensor]) -> Any:
        return model(b["codes"][:, :-1])

    # Generation, batch 1: a short prompt (song start, one instrument, eight notes), then `new` events sampled
    # with each side's own sampler and defaults (theirs: mmt/generate.py's top-k 0.9 with monotonic type and
    # beat, no end-of-song stop; ours: the recipe's sampling and grammar, not allowed to end early).
    new = 8 if args.tiny else args.generate
    prompt = [[SOS, 0, 0, 0, 0, 0], [INSTRUMENT_EVENT, 0, 0, 0, 0, 1], [SON, 0, 0, 0, 0, 0]]
    prompt += [[NOTE, 1 + i // 2, 1 + 6 * (i % 2), 61 + i, 12, 1] for i in range(8)]
    codes_of = encoding["type_code_map"]  # the same type codes on both sides
    assert (codes_of["start-of-song"], codes_of["note"], codes_of["end-of-song"]) == (SOS, NOTE, EOS)
    their_prompt = torch.tensor([prompt], device=device)
    sampling = recipe.generate.per_field()

    def our_generation() -> object:
        return generate(ours, np.asarray(prompt), max_events=len(prompt) + new, sampling=sampling, may_end=False,
                        device=device)

    def their_generation() -> object:
        return theirs.generate(their_prompt, new, eos_token=None, temperature=1.0, filter_logits_fn="top_k",
                               filter_thres=0.9, monotonicity_dim=("type", "beat"))

    sizes = sorted({1, batch})
    return Pair(
        "music",
        f"MMT (recipe mmt): width {m.dim}, {m.depth} layers, {m.num_heads} heads, MLP x{m.mlp_ratio:g}, "
        f"{length} events of 6 fields, max beat {max_beat}, {m.position} positions; random codes; "
        "per-field cross-entropy; inference = one forward over the window",
        batch,
        ours=Contender(ours, lambda net, b: task.loss(net, b)[0], our_out, make(batch), {s: make(s) for s in sizes}),
        theirs=Contender(theirs, their_loss, their_out, make(batch), {s: make(s) for s in sizes}),
        notes=["music: salu133445/mmt's music_x_transformers.py on x-transformers 0.25.9 (its environment.yml) "
               "with entmax and einops (wheels); its representation.py imports muspy and pretty_midi, used only "
               "to read/write MIDI: stubbed in sys.modules. Ours adds a learned position table at every layer "
               f"(the core's LearnedAbsolute inside each Attention), theirs one at the input: {m.depth - 1} x "
               f"{length} x {m.dim} = {(m.depth - 1) * length * m.dim / 1e6:.2f} M more parameters (embedding "
               "look-ups, no matrix products); the rest matches. "
               "Generation: ours decodes with the core's KV cache, theirs (x-transformers 0.25.9) re-reads the "
               "whole prefix for every event; both in fp32, each with its own sampler."],
        extras={f"generate {new} events after a {len(prompt)}-event prompt, batch 1 (ms)":
                (our_generation, their_generation)},
    )


# --- relational: our Relational Transformer vs rishabh-ranjan/relational-transformer --------------

# A small shop: tables, their (column, kind) features and the tables their foreign keys point to.
RELATIONAL_SCHEMA: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]], ...] = (
    ("customers", (("age", "number"), ("signup", "datetime"), ("city", "text"), ("vip", "boolean")), ()),
    ("products", (("price", "number"), ("category", "text"), ("added", "datetime")), ()),
    ("orders", (("amount", "number"), ("time", "datetime"), ("returned", "boolean")), ("customers", "products")),
    ("reviews", (("stars", "number"), ("time", "datetime"), ("text", "text"), ("helpful", "boolean")),
     ("orders", "customers")),
)
RELATIONAL_KINDS = ("number", "text", "datetime", "boolean")  # their semantic-type order (rt SEM_TYPE_NAMES)
MAX_PARENTS = 5  # foreign-key parents kept per cell (rt's MAX_F2P_NBRS)
TEXTS = 64  # distinct text values


def relational_cells(batch: int, *, cells: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Contexts of `cells` cell slots sampled from the shop: an entity customer first, then rows of random
    tables whose foreign keys point to earlier rows of the context (-1 where the parent table has none yet),
    every feature of a row a cell; a sample ends 0..cells/8 slots early (padding). About 15% of the number,
    datetime and boolean cells (at least one per sample) are targets (masked, to be predicted).

    Returns (B, S) tensors: row (-1 on padding), table, column (over the whole schema), kind (index into
    RELATIONAL_KINDS, -1 padding), value (float; text: a text id), target (bool); parents (B, S, 5)."""
    names = [(t, column) for t, features, _ in RELATIONAL_SCHEMA for column, _ in features]
    columns = {name: i for i, name in enumerate(names)}
    tables = [name for name, _, _ in RELATIONAL_SCHEMA]
    out = {"row": torch.full((batch, cells), -1), "table": torch.zeros(batch, cells, dtype=torch.long),
           "column": torch.zeros(batch, cells, dtype=torch.long), "kind": torch.full((batch, cells), -1),
           "value": torch.zeros(batch, cells), "target": torch.zeros(batch, cells, dtype=torch.bool),
           "parents": torch.full((batch, cells, MAX_PARENTS), -1)}
    weights = torch.tensor([0.1, 0.2, 0.4, 0.3])
    for b in range(batch):
        length = cells - int(torch.randint(0, cells // 8 + 1, (1,), generator=generator))
        rows_of: dict[str, list[int]] = {name: [] for name in tables}
        pos, row = 0, 0
        while pos < length:
            t = 0 if row == 0 else int(torch.multinomial(weights, 1, generator=generator))
            name, features, parent_tables = RELATIONAL_SCHEMA[t]
            parents = [rows_of[p][int(torch.randint(0, len(rows_of[p]), (1,), generator=generator))]
                       if rows_of[p] else -1 for p in parent_tables]
            rows_of[name].append(row)
            for column, kind in features[: length - pos]:
                k = RELATIONAL_KINDS.index(kind)
                value = (float(torch.randint(0, 2, (1,), generator=generator)) if kind == "boolean" else
                         float(torch.randint(0, TEXTS, (1,), generator=generator)) if kind == "text" else
                         float(torch.randn((), generator=generator)))
                out["row"][b, pos], out["table"][b, pos], out["column"][b, pos] = row, t, columns[name, column]
                out["kind"][b, pos], out["value"][b, pos] = k, value
                out["parents"][b, pos, : len(parents)] = torch.tensor(parents)
                pos += 1
            row += 1
        maskable = (out["kind"][b] >= 0) & (out["kind"][b] != RELATIONAL_KINDS.index("text"))
        target = maskable & (torch.rand(cells, generator=generator) < 0.15)
        target[int(maskable.nonzero()[0])] = True
        out["target"][b] = target
    return out


def rt_batch(c: dict[str, Tensor], *, d_text: int, device: torch.device) -> dict[str, Tensor]:
    """Their input (rt.data.process_batch's keys and integer types): text values and column names as fixed
    random d_text vectors standing in for the sentence embeddings their preprocessing stores; values in bf16 on
    CUDA as their loader gives them, fp32 on CPU."""
    g = torch.Generator().manual_seed(1)
    text_table = torch.randn(TEXTS, d_text, generator=g)
    column_table = torch.randn(int(c["column"].max()) + 1, d_text, generator=g)
    pad, kind, value = c["kind"] < 0, c["kind"], c["value"]
    is_text = kind == RELATIONAL_KINDS.index("text")
    per_kind = {name: torch.where(kind == i, value, 0.0)[..., None] for i, name in enumerate(RELATIONAL_KINDS)}
    per_kind["text"] = text_table[value.long().clamp(0, TEXTS - 1)] * is_text[..., None]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = {
        "node_idxs": c["row"].int(), "f2p_nbr_idxs": c["parents"].int(),
        "col_name_idxs": c["column"].int(), "table_name_idxs": c["table"].int(), "is_padding": pad,
        "col_name_values": column_table[c["column"]] * ~pad[..., None], "sem_types": kind.clamp(min=0).int(),
        "is_targets": c["target"], **{f"{name}_values": v for name, v in per_kind.items()},
    }
    return {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in batch.items()}


def our_relational_batch(c: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Ours (panformer.relational.domain.ContextDataset's keys): hashed words for text values and for column and
    table names, masked = their targets, no label cell (label_pos 0 is read and ignored)."""
    from panformer.relational.sampling import BOOL, NUMBER, TEXT, TIME, hash_words

    column_words = torch.tensor([hash_words(column) for _, features, _ in RELATIONAL_SCHEMA for column, _ in features])
    table_words = torch.tensor([hash_words(t) for t, _, _ in RELATIONAL_SCHEMA])
    text_words = torch.tensor([hash_words(f"value {i} of {TEXTS}") for i in range(TEXTS)])
    pad, kind = c["kind"] < 0, c["kind"]
    codes = torch.tensor([NUMBER, TEXT, TIME, BOOL])[kind.clamp(min=0)].masked_fill(pad, 0)
    is_text = (codes == TEXT)[..., None]
    batch = {
        "kind": codes, "value": torch.where(codes == TEXT, 0.0, c["value"]),
        "words": text_words[c["value"].long().clamp(0, TEXTS - 1)] * is_text,
        "column_words": column_words[c["column"]] * ~pad[..., None],
        "table_words": table_words[c["table"]] * ~pad[..., None],
        "column_ids": c["column"].masked_fill(pad, -1), "row_ids": c["row"], "parent_rows": c["parents"],
        "label_pos": torch.zeros(len(kind), dtype=torch.long), "masked": c["target"],
        "target": torch.zeros(len(kind)),
    }
    return {k: v.to(device) for k, v in batch.items()}


def our_relational_loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
    """Their loss's shape on our heads: Huber on target numbers and times, cross-entropy on target booleans
    (theirs: Huber, booleans folded into numbers), summed per sample, divided by the sample's targets,
    averaged over samples."""
    from panformer.relational.sampling import BOOL, NUMBER, TIME

    out, kind, value, target = model(b), b["kind"], b["value"].float(), b["masked"]
    numbers, bools = target & ((kind == NUMBER) | (kind == TIME)), target & (kind == BOOL)
    huber = nn.functional.huber_loss(out["cells"].float(), value, reduction="none")
    bce = nn.functional.binary_cross_entropy_with_logits(out["bools"].float(), value, reduction="none")
    per_sample = (huber * numbers).sum(1) + (bce * bools).sum(1)
    return (per_sample / target.sum(1).clamp(min=1)).mean()


def relational_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.relational.domain import RelationalDomain
    from panformer.relational.model import RelationalTransformer as OurRelationalTransformer

    # rt examples/train.py (the released RT-J run): num_blocks 12, d_model 512, num_heads 8, d_ff 2048 (SwiGLU),
    # d_text 384 (all-MiniLM-L12-v2), contexts of 1024-8192 cells, 2**17 cells per GPU, materialized masks.
    # Here: 1024 cells, batch 32 (2**15 cells; 2**17 would be batch 128).
    if args.tiny:
        blocks, dim, heads, ff, d_text, cells, batch = 1, 32, 2, 64, 16, 64, 2
    else:
        blocks, dim, heads, ff, d_text, cells, batch = 12, 512, 8, 2048, 384, 1024, 32
    batch = args.batch or batch

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ImportError("rt.model.checkpoints is stubbed by apps/bench/end_to_end.py (not needed for timing)")

    stubs = {"rt.model.checkpoints": stub_module("rt.model.checkpoints", MODEL_DIM_KEYS=(), load_model=refuse,
                                                 resolve_checkpoint=refuse)}
    with peer_imports(args.peers / "relational-transformer" / "src", stubs):
        from rt.model.net import RelationalTransformer  # type: ignore[import-not-found]
    theirs = RelationalTransformer(num_blocks=blocks, d_model=dim, d_text=d_text, num_heads=heads, d_ff=ff,
                                   compile=False, materialize_attn_masks=True, loss_fn="huber").to(device)
    if device.type == "cuda":
        # As rt.train builds it: bf16 weights. Under autocast alone its RMSNorm's fp32 scale would promote
        # queries and keys back to fp32, and its attention would run in fp32.
        theirs = theirs.to(torch.bfloat16)

    # Our recipe `database`, resized; a GELU MLP 1.5x as wide as their SwiGLU's d_ff has its parameters and
    # FLOPs. Full attention off: the three masked attentions remain, as in theirs.
    recipe = load_recipe(RelationalDomain().recipe_type_for, "relational", "database", overrides=[
        f"model.dim={dim}", f"model.depth={blocks}", f"model.num_heads={heads}", f"model.mlp_ratio={1.5 * ff / dim}",
        "model.dropout=0.0", f"data.max_cells={cells}", f"train.batch_size={batch}",
    ])
    m = recipe.model
    ours = OurRelationalTransformer(dim=m.dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                                    dropout=m.dropout, full_attention=False).to(device)

    g = torch.Generator().manual_seed(0)
    common = relational_cells(batch, cells=cells, generator=g)

    def part(n: int) -> dict[str, Tensor]:
        return {k: v[:n] for k, v in common.items()}

    def their_loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return model(b, return_embeddings=False)[0]

    def their_out(model: nn.Module, b: dict[str, Tensor]) -> Any:
        return model(b, return_embeddings=False)  # as their predict(): loss and per-type predictions

    def our_out(model: nn.Module, b: dict[str, Tensor]) -> Any:
        # shared_attention keys its padded-mask cache on the padding tensor's version counter, which tensors
        # made under inference_mode lack: ours steps out of it into no_grad (no autograd either way).
        with torch.inference_mode(False), torch.no_grad():
            return model(b)

    sizes = sorted({1, batch})
    return Pair(
        "relational",
        f"Relational Transformer: {blocks} blocks of column, feature and neighbour attention, width {dim}, "
        f"{heads} heads, FFN {ff} (theirs SwiGLU; ours GELU {int(1.5 * ff)}); {cells} cells per sample from 4 "
        "tables with foreign keys (numbers, datetimes, texts, booleans); ~15% of number/datetime/boolean cells "
        "masked; Huber + BCE on masked cells",
        batch,
        ours=Contender(ours, our_relational_loss, our_out, our_relational_batch(common, device),
                       {s: our_relational_batch(part(s), device) for s in sizes}),
        theirs=Contender(theirs, their_loss, their_out, rt_batch(common, d_text=d_text, device=device),
                         {s: rt_batch(part(s), d_text=d_text, device=device) for s in sizes}),
        notes=["relational: rishabh-ranjan/relational-transformer's src/rt/model/net.py (RT-J), its flex_attention "
               "compiled at import by its own code, masks materialized (its released setting); rt.model.checkpoints "
               "(Hub/safetensors loading) stubbed in sys.modules; needs einops (wheel). Both: pre-norm residual "
               "column, feature (own row + foreign-key parents) and neighbour (rows pointing here) attention, "
               "then a feed-forward. Theirs: RMSNorm, QK-norm, a learned per-head scale times log(number of keys), "
               "a sigmoid output gate per attention, SwiGLU, no biases, d_text sentence-embedding vectors for texts "
               "and column names (here fixed random vectors), booleans folded into numbers. Ours: LayerNorm, "
               "plain attention, GELU MLP 1.5x wider (same parameters and FLOPs as their SwiGLU), hashed-word "
               "embedding bags for texts and names, a kind embedding, our full attention off (a recipe option "
               "this model does not expose yet); ours infers under no_grad rather than inference_mode (see our_out). "
               "On CUDA theirs has bf16 weights as rt.train builds it (its AdamW steps bf16 weights; rt.train "
               "keeps fp32 masters and uses Muon), ours fp32 weights under bf16 autocast. FlexAttention has no "
               "CPU backward: theirs trains on CUDA only."],
    )


# --- domains without a public reference implementation: ours alone -------------------------------


def sign_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.sign.domain import SignDomain, build_classifier
    from panformer.sign.features import FEATURES

    overrides = ["model.dim=32", "model.depth=1", "model.num_heads=2", "data.max_frames=16"] if args.tiny else []
    recipe = load_recipe(SignDomain().recipe_type_for, "sign", "tslformer", overrides=overrides)
    m, frames, classes = recipe.model, recipe.data.max_frames, recipe.data.synthetic.signs
    batch = args.batch or (2 if args.tiny else recipe.train.batch_size)
    ours = build_classifier(m, num_classes=classes, max_frames=frames).to(device)

    g = torch.Generator().manual_seed(0)
    features = torch.randn(batch, frames, FEATURES, generator=g)
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=g)
    valid = torch.arange(frames) < lengths[:, None]
    target = torch.randint(0, classes, (batch,), generator=g)

    def make(n: int) -> dict[str, Tensor]:
        return {"features": features[:n].to(device), "valid": valid[:n].to(device), "target": target[:n].to(device)}

    def our_out(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return model(b["features"], b["valid"])

    sizes = sorted({1, batch})
    return Pair(
        "sign",
        f"TSLFormer-style frame transformer (recipe tslformer): width {m.dim}, {m.depth} layers, {m.num_heads} "
        f"heads, MLP x{m.mlp_ratio:g}; {frames} frames of {FEATURES} landmark features (random, {frames // 2}-"
        f"{frames} valid), {classes} classes; cross-entropy",
        batch,
        ours=Contender(ours, lambda net, b: nn.functional.cross_entropy(our_out(net, b).float(), b["target"]),
                       our_out, make(batch), {s: make(s) for s in sizes}),
        theirs=None,
        notes=["sign: no public reference implementation of a TSLFormer-style landmark classifier to run: ours only."],
    )


def molecules_pair(args: argparse.Namespace, device: torch.device) -> Pair:
    from panformer.molecules.domain import MoleculesDomain, build_model

    overrides = ["model.dim=32", "model.depth=1", "model.num_heads=2", "data.max_atoms=12"] if args.tiny else []
    domain = MoleculesDomain()
    recipe = load_recipe(domain.recipe_type_for, "molecules", "coordformer", overrides=overrides)
    m, atoms = recipe.model, recipe.data.max_atoms
    batch = args.batch or (2 if args.tiny else recipe.train.batch_size)
    ours = build_model(m).to(device)
    task = domain.task(recipe)

    # Molecule-like structures: H, C, N, O at ~1.5 Å spacing (a random walk), 1/3..all of max_atoms atoms.
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(max(2, atoms // 3), atoms + 1, (batch,), generator=g)
    valid = torch.arange(atoms) < counts[:, None]
    elements = torch.tensor([1, 6, 7, 8])
    numbers = elements[torch.randint(0, 4, (batch, atoms), generator=g)] * valid
    steps = torch.nn.functional.normalize(torch.randn(batch, atoms, 3, generator=g), dim=-1) * 1.5
    positions = steps.cumsum(1) * valid[..., None]
    forces = torch.randn(batch, atoms, 3, generator=g) * valid[..., None]
    energy = torch.randn(batch, generator=g)

    def make(n: int) -> dict[str, Tensor]:
        b = {"numbers": numbers[:n], "positions": positions[:n], "valid": valid[:n], "energy": energy[:n],
             "forces": forces[:n], "has_forces": torch.ones(n, dtype=torch.bool)}
        return {k: v.to(device) for k, v in b.items()}

    def our_out(model: nn.Module, b: dict[str, Tensor]) -> Any:
        return model(b["numbers"], b["positions"], b["valid"])

    sizes = sorted({1, batch})
    return Pair(
        "molecules",
        f"coordinate transformer (recipe coordformer): width {m.dim}, {m.depth} layers, {m.num_heads} heads, "
        f"MLP x{m.mlp_ratio:g}, {m.coordinate_embedding} coordinates, {m.forces} forces; up to {atoms} atoms "
        "(random H/C/N/O chains); the recipe's energy + force loss with random rotations; fp32 (the recipe's "
        "precision)",
        batch,
        ours=Contender(ours, lambda net, b: task.loss(net, b)[0], our_out, make(batch), {s: make(s) for s in sizes}),
        theirs=None,
        notes=["molecules: no public reference implementation of our graph-free coordinate transformer: ours only "
               "(apps/bench/molecules.py compares it with SchNet on accuracy)."],
        mixed_precision=False,
    )


PAIRS = {"graphs": graphs_pair, "timeseries": timeseries_pair, "sign": sign_pair, "molecules": molecules_pair,
         "relational": relational_pair, "music": music_pair, "speech": speech_pair}


# --- timing ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round_robin(fns: dict[str, Callable[[], object]], *, device: torch.device, warmup: int,
                     iters: int, failures: dict[str, str] | None = None) -> dict[str, float]:
    """Median wall time (ms, synchronised) of each function, called in turn round after round with the
    order rotating, after `warmup` calls each (at least one; compilation happens there). With `failures`,
    a function that raises in its warm-up is left out, its error kept there under its name."""
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(warmup, 1)):
                fn()
        except Exception as error:
            if failures is None:
                raise
            traceback.print_exc()
            failures[name] = one_line(error)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        live[name] = fn
    fns, names = live, list(live)
    if not names:
        return {}
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(iters):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def one_line(error: BaseException) -> str:
    """An error as one table-safe line."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}".replace("|", "/")[:300]


def _precision(mixed: bool) -> str:
    """The engine's precision setting: bf16 autocast on CUDA (the engine's "auto"), or fp32."""
    return "auto" if mixed else "fp32"


def train_step(model: nn.Module, loss: Callable[[nn.Module, Any], Tensor], batch: Any, device: torch.device,
               lr: float = 1e-4, *, mixed_precision: bool = True, fused: bool = False) -> Callable[[], object]:
    """One training step; ``fused``: the fused AdamW kernel, as our engine uses on CUDA."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused or None)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, _precision(mixed_precision)):
            value = loss(model, batch)
        value.backward()
        optimizer.step()

    return step


def graphed_train_step(model: nn.Module, loss: Callable[[nn.Module, Any], Tensor], batch: Any, lr: float = 1e-4, *,
                       mixed_precision: bool = True) -> tuple[Callable[[], object], GraphedTrainStep]:
    """The same step as ``train_step``, as ``train.cuda_graphs`` runs it: replayed from a CUDA graph."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, capturable=True, fused=True)
    cast = lambda: autocast(torch.device("cuda"), _precision(mixed_precision), cache=False)  # noqa: E731
    graphed = GraphedTrainStep(model, loss, optimizer, autocast=cast)

    def step() -> None:
        model.train()
        graphed(batch)

    return step, graphed


def infer_call(model: nn.Module, infer: Callable[[nn.Module, Any], Any], batch: Any,
               device: torch.device, *, mixed_precision: bool = True) -> Callable[[], object]:
    def call() -> object:
        model.eval()
        with torch.inference_mode(), autocast(device, _precision(mixed_precision)):
            return infer(model, batch)

    return call


def contenders(pair: Pair, *, compiled: bool) -> dict[str, Contender]:
    """Ours and theirs (theirs where there is a reference), eager or both under torch.compile."""
    named = {side: c for side, c in (("ours", pair.ours), ("theirs", pair.theirs)) if c is not None}
    if not compiled:
        return named
    return {f"{side} compiled": Contender(torch.compile(c.model), c.loss, c.infer, c.train_batch, c.infer_batches)
            for side, c in named.items()}


def measure(pair: Pair, args: argparse.Namespace, device: torch.device, *, compiled: bool) -> dict[str, Any]:
    """Timings of each contender; one that fails (e.g. a peer under torch.compile) is left out and noted."""
    named = contenders(pair, compiled=compiled)
    mixed = pair.mixed_precision
    failed: dict[str, str] = {}
    # Ours with the engine's optimizer (fused AdamW on CUDA), theirs with PyTorch's default, as their scripts use.
    steps = {name: train_step(c.model, c.loss, c.train_batch, device, mixed_precision=mixed,
                              fused=name.startswith("ours") and device.type == "cuda")
             for name, c in named.items()}
    graphed = None
    if args.cuda_graphs and not compiled and device.type == "cuda":
        steps["ours graphed"], graphed = graphed_train_step(pair.ours.model, pair.ours.loss, pair.ours.train_batch,
                                                            mixed_precision=mixed)
    train = time_round_robin(steps, device=device, warmup=args.warmup, iters=args.iters, failures=failed)
    failures = [f"{pair.domain}: {name}, training step: {error}" for name, error in failed.items()]
    if graphed is not None and not graphed.graphs:  # it ran eagerly: say so, its row is not a graph's
        train.pop("ours graphed", None)
        failures.append(f"{pair.domain}: ours graphed, not captured: {'; '.join(graphed.eager_only.values())}")
    profiles = {}
    if args.profile and not compiled:  # the steps are warm: they were just timed
        profiles = {name: profile_step(step, device=device, steps=args.profile)
                    for name, step in steps.items() if name not in failed}
    infer = {}
    for size in sorted(pair.ours.infer_batches):
        failed = {}
        infer[size] = time_round_robin(
            {name: infer_call(c.model, c.infer, c.infer_batches[size], device, mixed_precision=mixed)
             for name, c in named.items()},
            device=device, warmup=args.warmup, iters=args.iters, failures=failed,
        )
        failures += [f"{pair.domain}: {name}, inference at batch {size}: {error}" for name, error in failed.items()]
    extras = {}
    if not compiled:
        for label, (our_call, their_call) in pair.extras.items():
            extras[label] = time_round_robin({"ours": _no_grad(our_call), "theirs": _no_grad(their_call)},
                                             device=device, warmup=1, iters=min(args.iters, 3))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"train_ms": train, "infer_ms": infer, "extras_ms": extras, "peak_gib": peak, "failures": failures,
            "profiles": profiles}


def _no_grad(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return fn()

    return call


# --- report ---------------------------------------------------------------------------------------


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str, device: torch.device) -> str:
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"none (CPU: {cpu_name()})"
    lines = [
        "# End to end: our models next to the reference implementations",
        "",
        f"- command: `{command}`",
        f"- device: {gpu}; torch {torch.__version__}; precision: "
        f"{'bf16 autocast (fp32 where a configuration says so)' if device.type == 'cuda' else 'fp32'}; date "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- median of {args.iters} synchronised timings after {args.warmup} warm-up calls each, contenders "
        "round-robin; training step = forward + loss + backward + AdamW step; inference = one forward without "
        "gradients",
        "- `x` columns: their time / our time (above 1: ours faster); `–`: no reference implementation, or a "
        "timing that failed (see the notes). `(compiled)` rows: both models under torch.compile, timed in a "
        "second pass after every eager row (same process, compilation in the warm-up); a peer that fails to "
        "compile is shown with its eager timing, marked `(eager)`",
        "",
        "| domain | batch | params ours / theirs | train samples/s: ours | theirs | x | inference ms, batch 1: "
        "ours | theirs | x | inference ms, batch B: ours | theirs | x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    for r in results:
        if "error" in r:
            lines.append(f"| {r['domain']} | – | – | failed: {r['error']} | | | | | | | | |")
            continue
        lines += [f"| {' | '.join(cells)} |" for cells in row_cells(r)]
        peak = f"; peak GPU memory {r['peak_gib']:.1f} GiB (all contenders)" if r.get("peak_gib") else ""
        details.append(f"- **{r['domain']}**: {r['config']}{peak}")
    extra_rows = [f"| {r['domain']} | {label} | {t['ours']:.1f} | {t['theirs']:.1f} | {t['theirs'] / t['ours']:.2f} |"
                  for r in results for label, t in r.get("extras_ms", {}).items()]
    if extra_rows:
        lines += ["", "## Further timings (eager, fp32)", "", "| domain | what | ours | theirs | x |",
                  "|---|---|---|---|---|", *extra_rows]
    lines += profile_lines(results)
    lines += ["", "## Configurations", "", *details]
    notes = [n for r in results for n in [*r.get("notes", []), *r.get("failures", [])]]
    if notes:
        lines += ["", "## Differences, import patches and failures", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def profile_lines(results: list[dict[str, Any]]) -> list[str]:
    """Where each training step's time goes (``--profile``): GPU busy share, launches, kernel time by kind."""
    rows = [(r, name, p) for r in results for name, p in r.get("profiles", {}).items()]
    if not rows:
        return []
    kinds = list(rows[0][2].by_category_ms)
    lines = ["", "## Where a training step's time goes (torch.profiler, eager)", "",
             "Kernel time summed per step over the profiled steps; `GPU busy`: that time over the step's unprofiled "
             "median wall time (well below 1: the step waits on the host, i.e. Python, dispatch and launches).", "",
             f"| domain | contender | step ms | GPU kernel ms | GPU busy | kernels per step | "
             f"{' | '.join(f'{k} ms' for k in kinds)} |",
             "|---|---|---|---|---|---|" + "---|" * len(kinds)]
    for r, name, p in rows:
        wall = r["train_ms"].get(name, p.wall_ms)
        lines.append(f"| {r['domain']} | {name} | {wall:.2f} | {p.gpu_ms:.2f} | {p.gpu_ms / wall:.2f} | "
                     f"{p.kernels:.0f} | {' | '.join(f'{p.by_category_ms[k]:.2f}' for k in kinds)} |")
    return lines


def row_cells(r: dict[str, Any]) -> list[list[str]]:
    """The table rows of one domain: eager, then compiled when that pass ran."""
    p_ours, p_theirs = r["params_ours"], r["params_theirs"]
    if p_theirs is None:
        params = f"{_count(p_ours)} / –"
    else:
        flag = "" if abs(p_ours - p_theirs) <= 0.1 * p_theirs else " **(differ > 10%)**"
        params = f"{_count(p_ours)} / {_count(p_theirs)}{flag}"
    batch = r["batch"]

    def sps(ms: float) -> str:
        value = batch / ms * 1000
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"

    passes = [("", "ours", "theirs")]
    if "ours graphed" in r["train_ms"]:
        passes.append((" (ours: CUDA graph)", "ours graphed", "theirs"))
    if r.get("compiled"):
        passes.append((" (compiled)", "ours compiled", "theirs compiled"))
    rows = []
    for tag, ours, theirs in passes:
        cells = [f"{r['domain']}{tag}", str(batch), params]
        for times, show in [(r["train_ms"], sps), *[(t, lambda ms: f"{ms:.2f}") for _, t in sorted(r["infer_ms"].items())]]:
            mine, other, marker = times.get(ours), times.get(theirs), ""
            if other is None and tag and p_theirs is not None and "theirs" in times:
                other, marker = times["theirs"], " (eager)"  # the peer failed under torch.compile
            cells += [show(mine) if mine is not None else "–",
                      show(other) + marker if other is not None else "–",
                      f"{other / mine:.2f}" if mine is not None and other is not None else "–"]
        if len(r["infer_ms"]) == 1:  # batch 1 is the batch: the same cells twice
            cells += cells[-3:]
        rows.append(cells)
    return rows


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def run_domain(name: str, args: argparse.Namespace, device: torch.device, *,
               compiled: bool = False) -> dict[str, Any]:
    """One domain's eager pass (ours and theirs, round-robin), or its compiled pass (both compiled)."""
    torch.manual_seed(0)
    stage = "compiling" if compiled else "timing"
    try:
        _FORGOTTEN.clear()
        pair = PAIRS[name](args, device)
    except Exception as error:  # a peer that cannot be imported or built: the row says why, others still run
        traceback.print_exc()
        return {"domain": name, "error": f"building: {one_line(error)}"}
    result: dict[str, Any] = {"domain": name, "config": pair.config, "batch": pair.batch, "notes": pair.notes,
                              "params_ours": parameters(pair.ours.model),
                              "params_theirs": parameters(pair.theirs.model) if pair.theirs else None}
    if args.params_only:
        return result
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        with peer_modules_restored():
            result |= measure(pair, args, device, compiled=compiled)
    except Exception as error:
        traceback.print_exc()
        result = {"domain": name, "error": f"{stage}: {one_line(error)}", "notes": pair.notes}
    del pair
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def merge_compiled(eager: dict[str, Any], compiled: dict[str, Any]) -> None:
    """Add the compiled pass's timings (and failures) to the eager row."""
    if "error" in eager:
        return
    if "error" in compiled:
        eager["notes"] = [*eager["notes"], f"{eager['domain']}: the compiled pass failed: {compiled['error']}"]
        return
    eager["compiled"] = True
    eager["failures"] = [*eager.get("failures", []), *compiled["failures"]]
    eager["train_ms"] |= compiled["train_ms"]
    for size, times in compiled["infer_ms"].items():
        eager["infer_ms"][size] |= times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", action="append", choices=DOMAINS,
                        help="a domain to run (repeatable; default: all)")
    parser.add_argument("--peers", type=Path, default=Path(".peers"),
                        help="folder with the peers' own source trees (pytorch_geometric/, Time-Series-Library/, "
                             "ClearerVoice-Studio/, mmt/, relational-transformer/)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a quick wiring check on CPU")
    parser.add_argument("--batch", type=int, default=None, help="override every domain's batch")
    parser.add_argument("--compile", nargs="?", const=",".join(DOMAINS), default="", metavar="DOMAINS",
                        help="also time the models (ours and theirs) under torch.compile: all domains, or those "
                             "listed (a,b), in that order, after every eager row")
    parser.add_argument("--params-only", action="store_true", help="build both models, print parameter counts, time nothing")
    parser.add_argument("--generate", type=int, default=256, help="music: events to generate in the generation timing")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="CUDA: also time our training step as train.cuda_graphs runs it (a row against their "
                             "eager step)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS eager training steps of each contender (torch.profiler): GPU busy "
                             "share, kernel launches and kernel time by kind, per step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.compile.split(","))) - set(DOMAINS)
    if unknown:
        parser.error(f"--compile: unknown domain(s) {', '.join(sorted(unknown))}; use some of {', '.join(DOMAINS)}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.profile < 0:
        parser.error(f"--profile takes a number of steps (0: off), got {args.profile}")
    if args.cuda_graphs and device.type != "cuda":
        parser.error("--cuda-graphs replays CUDA graphs: run it on a CUDA device")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    results = []
    domains = args.domain or list(DOMAINS)
    for name in domains:  # eager first, every domain, so that a run cut short by compilation keeps them
        start = time.perf_counter()
        results.append(run_domain(name, args, device))
        print(f"{name}: {time.perf_counter() - start:.1f} s", _summary(results[-1]), flush=True)
        if args.out and not args.params_only:  # rewritten after every domain: a cut-short run keeps its rows
            args.out.write_text(render(results, args, command, device))
    if args.params_only:
        return
    by_domain = {r["domain"]: r for r in results}
    for name in filter(None, args.compile.split(",")):  # in the order given: a run cut short keeps the first
        if name not in by_domain:
            continue
        result = by_domain[name]
        start = time.perf_counter()
        merge_compiled(result, run_domain(result["domain"], args, device, compiled=True))
        print(f"{result['domain']} compiled: {time.perf_counter() - start:.1f} s", _summary(result), flush=True)
        if args.out:
            args.out.write_text(render(results, args, command, device))
    report = render(results, args, command, device)
    if args.out:
        args.out.write_text(report)
    print(report)


def _summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    theirs = "–" if result["params_theirs"] is None else f"{result['params_theirs']:,}"
    if "train_ms" not in result:
        return f"params ours {result['params_ours']:,} / theirs {theirs}"
    train = result["train_ms"]
    return " ".join(f"{name} {ms:.1f} ms/step" for name, ms in train.items()) + (
        f"; params {result['params_ours']:,} / {theirs}")


if __name__ == "__main__":
    main()
