"""Image graphs (SAG-ViT, Venkatraman et al., 2024): multi-scale patch features from a torchvision CNN, a
graph over the patches, graph attention (torch_geometric GATConv), then a transformer encoder on
shared_attention; plus a bare-CNN and a plain-ViT baseline on the same data.

Data: `sklearn:digits` (scikit-learn's bundled 8x8 digits, upscaled; offline), `torchvision:<Name>` (e.g.
CIFAR10, MNIST, downloaded and cached when online) or a folder of class sub-folders of images.

Legend: B images, C channels, S image side, P patches (h * w), D width, H heads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from panformer.engine.config import Recipe, StrictModel
from panformer.engine.domain import Metrics, Splits, Task
from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.metrics import ClassificationMetrics
from panformer.engine.plots import confusion_matrix_of
from shared_attention import Attention, HiLo, Mask, Neighborhood, RoPE, Variant

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# --- recipe --------------------------------------------------------------------------------------


class ImageData(StrictModel):
    source: str = Field("sklearn:digits", description="sklearn:digits, torchvision:<Name> (e.g. CIFAR10) or a "
                        "folder of class sub-folders of images")
    cache_dir: str = Field("runs/data/graphs/images", description="where torchvision datasets are cached")
    image_size: int = Field(32, ge=16, description="images are resized to image_size x image_size")
    max_images: int | None = Field(None, ge=10, description="use at most this many images (a seeded subset)")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0


class DenseAttentionConfig(StrictModel):
    """Every patch attends every patch."""

    name: Literal["dense"] = "dense"


class HiLoConfig(StrictModel):
    """HiLo (LITv2): the Hi-Fi heads attend within s x s patch windows, the Lo-Fi heads attend keys averaged over
    each window (a coarse global view)."""

    name: Literal["hilo"] = "hilo"
    window_size: int = Field(2, ge=1, description="s; must divide the patch grid's side (data.image_size / 4)")
    alpha: float = Field(0.5, ge=0, le=1, description="fraction of Lo-Fi heads (floor(alpha * num_heads))")


class NeighborhoodConfig(StrictModel):
    """Neighbourhood attention (NAT): each patch attends the k x k patches around it."""

    name: Literal["neighborhood"] = "neighborhood"
    kernel_size: int = Field(3, ge=1, description="k; at most the patch grid's side (data.image_size / 4)")


PatchAttentionConfig = Annotated[DenseAttentionConfig | HiLoConfig | NeighborhoodConfig, Field(discriminator="name")]


class SAGViTConfig(StrictModel):
    name: Literal["sagvit"] = "sagvit"
    dim: int = Field(64, ge=8)
    depth: int = Field(2, ge=1, description="transformer encoder blocks after the graph attention")
    num_heads: int = Field(4, ge=1)
    graph: Literal["grid", "knn"] = Field("grid", description="patch graph: 8-neighbour grid or k-NN in feature space")
    k: int = Field(8, ge=1, description="neighbours per patch for graph=knn")
    backbone_weights: str | None = Field(None, description="a ResNet-18 state dict on disk (.pth/.safetensors); "
                                         "never downloaded. Default: random initialisation")
    dropout: float = Field(0.1, ge=0, lt=1)
    attention: PatchAttentionConfig = Field(default_factory=DenseAttentionConfig,
                                            description="the encoder's attention over the patch grid: dense, hilo "
                                            "or neighborhood")


class CNNConfig(StrictModel):
    """The bare backbone (ResNet-18 up to layer2), globally pooled: the baseline SAG-ViT builds on."""

    name: Literal["cnn"] = "cnn"
    backbone_weights: str | None = None
    dropout: float = Field(0.1, ge=0, lt=1)


class ViTConfig(StrictModel):
    """A plain ViT on raw pixel patches (no CNN, no graph), for comparison."""

    name: Literal["vit"] = "vit"
    patch: int = Field(4, ge=2)
    dim: int = Field(64, ge=8)
    depth: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


ImageModelConfig = Annotated[SAGViTConfig | CNNConfig | ViTConfig, Field(discriminator="name")]


class ImageGraphRecipe(Recipe):
    default_model_name = "sagvit"

    domain: Literal["graphs"] = "graphs"
    task: Literal["image-classification"] = "image-classification"
    data: ImageData = ImageData()
    model: ImageModelConfig = SAGViTConfig()


# --- models --------------------------------------------------------------------------------------


def resnet_trunk(weights: str | None) -> nn.ModuleDict:
    """ResNet-18 from the stem to layer2 (strides 4 and 8), random unless a weights file is given."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"model.backbone_weights {path} does not exist; give a ResNet-18 state dict on disk")
        if path.suffix != ".safetensors":
            # Checkpoints are never unpickled: a .pth file must be converted once by its owner.
            raise UserError(f"model.backbone_weights {path}: give a .safetensors file (convert a .pth once with "
                            "safetensors.torch.save_file(torch.load(...), 'resnet18.safetensors'))")
        from safetensors.torch import load_file

        state = load_file(str(path))
        missing = net.load_state_dict(state, strict=False).missing_keys
        if any(k.startswith(("conv1", "layer1", "layer2")) for k in missing):
            raise UserError(f"model.backbone_weights {path}: not a ResNet-18 state dict (missing {missing[0]})")
    return nn.ModuleDict({"stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                          "layer1": net.layer1, "layer2": net.layer2})


def multiscale_patches(trunk: nn.ModuleDict, images: Tensor) -> Tensor:
    """images (B, 3, S, S) -> patch features (B, 192, S/4, S/4): layer1 with layer2 upsampled onto its grid."""
    fine = trunk["layer1"](trunk["stem"](images))
    coarse = trunk["layer2"](fine)
    coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], dim=1)


def grid_edges(h: int, w: int) -> Tensor:
    """8-neighbour grid adjacency over h x w patches, row-major (2, E), both directions."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    edges = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        edges.append(torch.stack([(ys * w + xs)[ok], (ny * w + nx)[ok]]))
    e = torch.cat(edges, dim=1)
    return torch.cat([e, e.flip(0)], dim=1)


def knn_edges(tokens: Tensor, k: int) -> Tensor:
    """k nearest patches in feature space, per image: tokens (B, P, D) -> (2, B * P * k) flattened indices."""
    batch, patches, _ = tokens.shape
    distance = torch.cdist(tokens.detach().float(), tokens.detach().float())
    distance.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    nearest = distance.topk(min(k, patches - 1), largest=False).indices  # (B, P, k)
    offset = (torch.arange(batch, device=tokens.device) * patches)[:, None, None]
    dst = (torch.arange(patches, device=tokens.device)[None, :, None] + offset).expand_as(nearest)
    return torch.stack([(nearest + offset).flatten(), dst.flatten()])


def patch_attention(cfg: PatchAttentionConfig, grid: tuple[int, int]) -> tuple[Variant | None, Mask | None]:
    """The core variant and mask that `cfg` names over a patch grid (h, w); (None, None) is dense attention."""
    side = min(grid)
    if isinstance(cfg, HiLoConfig):
        if any(n % cfg.window_size for n in grid):
            raise UserError(f"model.attention.window_size {cfg.window_size} must divide the {grid[0]}x{grid[1]} "
                            "patch grid (data.image_size / 4); pick a divisor")
        return HiLo(grid, window_size=cfg.window_size, alpha=cfg.alpha), None
    if isinstance(cfg, NeighborhoodConfig):
        if cfg.kernel_size > side:
            raise UserError(f"model.attention.kernel_size {cfg.kernel_size} exceeds the {grid[0]}x{grid[1]} patch "
                            f"grid (data.image_size / 4); give at most {side}")
        return None, Neighborhood(grid, cfg.kernel_size)
    return None, None


class EncoderBlock(nn.Module):
    """Pre-norm transformer block on shared_attention, with axial RoPE over the patch grid.

    `variant` / `mask`: the core's attention variant and mask over the grid (default: dense softmax).
    """

    def __init__(self, dim: int, *, num_heads: int, grid: tuple[int, int], dropout: float,
                 variant: Variant | None = None, mask: Mask | None = None) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, num_heads, position=RoPE(axes=2, grid=grid), variant=variant,
                                   dropout=dropout)
        self.mask = mask
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), mask=self.mask)
        return x + self.ffn(self.norm2(x))


class SAGViT(nn.Module):
    """CNN patches -> patch graph -> GATConv -> transformer encoder -> mean pool -> classes."""

    def __init__(self, *, num_classes: int, image_size: int, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 graph: str = "grid", k: int = 8, backbone_weights: str | None = None, dropout: float = 0.1,
                 attention: PatchAttentionConfig | None = None) -> None:
        super().__init__()
        from torch_geometric.nn import GATConv

        side = image_size // 4
        self.grid, self.graph, self.k = (side, side), graph, k
        self.trunk = resnet_trunk(backbone_weights)
        self.project = nn.Linear(64 + 128, dim)
        if dim % num_heads:
            raise UserError(f"model.dim {dim} must be divisible by model.num_heads {num_heads}")
        self.gat = GATConv(dim, dim // num_heads, heads=num_heads, dropout=dropout)
        self.gat_norm = nn.LayerNorm(dim)
        self.register_buffer("grid_edges", grid_edges(side, side), persistent=False)
        variant, mask = patch_attention(attention or DenseAttentionConfig(), self.grid)
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads=num_heads, grid=self.grid, dropout=dropout,
                                                 variant=variant, mask=mask)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def patch_graph(self, tokens: Tensor) -> Tensor:
        batch, patches, _ = tokens.shape
        if self.graph == "knn":
            return knn_edges(tokens, self.k)
        offset = torch.arange(batch, device=tokens.device).repeat_interleave(self.grid_edges.shape[1]) * patches
        return self.grid_edges.repeat(1, batch) + offset

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) -> logits (B, classes)."""
        tokens = self.project(multiscale_patches(self.trunk, images).flatten(2).transpose(1, 2))  # (B, P, D)
        batch, patches, dim = tokens.shape
        edges = self.patch_graph(tokens)
        graph = self.gat(tokens.reshape(batch * patches, dim), edges).view(batch, patches, dim)
        x = self.gat_norm(tokens + graph)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class BareCNN(nn.Module):
    """The same ResNet-18 trunk, global-average pooled, linear head."""

    def __init__(self, *, num_classes: int, backbone_weights: str | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.trunk = resnet_trunk(backbone_weights)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(64 + 128, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(multiscale_patches(self.trunk, images).mean((2, 3)))


class PlainViT(nn.Module):
    """Linear patch embedding of raw pixels plus a transformer encoder (axial RoPE), mean pooled."""

    def __init__(self, *, num_classes: int, image_size: int, patch: int = 4, dim: int = 64, depth: int = 3,
                 num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if image_size % patch:
            raise UserError(f"data.image_size {image_size} must be a multiple of model.patch {patch}")
        side = image_size // patch
        self.embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads=num_heads, grid=(side, side), dropout=dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


# --- data ----------------------------------------------------------------------------------------


def load_images(source: str, *, cache_dir: Path) -> tuple[Tensor, np.ndarray, list[str]]:
    """-> images (N, 3, S0, S0) float in [0, 1], labels (N,) int, class names."""
    if source == "sklearn:digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
        return images.contiguous(), digits.target.astype(np.int64), [str(c) for c in digits.target_names]
    if source.startswith("torchvision:"):
        return load_torchvision(source.split(":", 1)[1], cache_dir=cache_dir)
    folder = Path(source)
    if folder.is_dir():
        return read_image_folder(folder)
    raise UserError(f"--data {source}: give sklearn:digits, torchvision:<Name> (e.g. CIFAR10) or a folder of "
                    "class sub-folders of images")


def load_torchvision(name: str, *, cache_dir: Path) -> tuple[Tensor, np.ndarray, list[str]]:
    import torchvision.datasets as tv

    cls = getattr(tv, name, None) if name.isidentifier() else None
    if not isinstance(cls, type):
        raise UserError(f"--data torchvision:{name}: not a torchvision dataset; try torchvision:CIFAR10 or MNIST")
    try:
        dataset = cls(str(cache_dir / name), train=True, download=True)
    except OSError as err:
        raise UserError(f"--data torchvision:{name}: could not download it into {cache_dir / name} "
                        f"({type(err).__name__}); connect once, or use sklearn:digits offline") from None
    except TypeError:
        raise UserError(f"--data torchvision:{name}: this dataset has no train split Panformer can read") from None
    data = torch.as_tensor(np.asarray(dataset.data))
    images = data.float() / 255.0
    images = images[:, None].expand(-1, 3, -1, -1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), np.asarray(dataset.targets, dtype=np.int64), [str(c) for c in dataset.classes]


def read_image(path: Path) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{path}: not a readable image; give PNG/JPEG files") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def read_image_folder(folder: Path) -> tuple[Tensor, np.ndarray, list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"--data {folder}: no class sub-folders; put each class's images in its own folder")
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(resize(read_image(path)[None], 64)[0])
                labels.append(index)
    if len(images) < 10:
        raise UserError(f"--data {folder}: {len(images)} images; give at least 10")
    return torch.stack(images), np.asarray(labels), classes


def resize(images: Tensor, size: int) -> Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class ImageSet(Dataset):
    """images (N, 3, S, S) and labels (N,) as {"image", "target"} items."""

    def __init__(self, images: Tensor, target: Tensor) -> None:
        self.images, self.target = images, target

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "target": self.target[i]}


class NormalisedImages(nn.Module):
    """Wraps a classifier with the training set's per-channel mean/std (buffers travel with the weights)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images - self.mean[:, None, None]) / self.std[:, None, None])


class ImageClassificationTask(Task):
    monitor = "accuracy"
    monitor_mode = "max"

    def load_splits(self, recipe: ImageGraphRecipe, *, source: str | None = None) -> Splits:
        from panformer.graphs.static import split_indices

        data = recipe.data
        source = source or data.source
        images, labels, classes = load_images(source, cache_dir=Path(data.cache_dir))
        if data.max_images is not None and len(labels) > data.max_images:
            keep = np.sort(np.random.default_rng(data.split_seed).permutation(len(labels))[: data.max_images])
            images, labels = images[keep], labels[keep]
        images = resize(images, data.image_size)
        index = split_indices(len(labels), val=data.val_fraction, test=data.test_fraction, seed=data.split_seed,
                              labels=labels)
        target = torch.from_numpy(labels)
        parts = {k: ImageSet(images[v], target[v]) for k, v in index.items()}
        digest = hashlib.sha256(images.numpy().tobytes() + labels.tobytes()).hexdigest()[:16]
        info = {"classes": classes, "image_size": data.image_size, "source": source,
                "split_sizes": {k: int(v.size) for k, v in index.items()}}
        return Splits(parts["train"], parts["val"], parts["test"], info=info, fingerprint=digest)

    def build_model(self, recipe: ImageGraphRecipe, info: dict[str, Any]) -> nn.Module:
        cfg, classes, size = recipe.model, len(info["classes"]), info["image_size"]
        if isinstance(cfg, CNNConfig):
            net: nn.Module = BareCNN(num_classes=classes, backbone_weights=cfg.backbone_weights, dropout=cfg.dropout)
        elif isinstance(cfg, ViTConfig):
            net = PlainViT(num_classes=classes, image_size=size, patch=cfg.patch, dim=cfg.dim, depth=cfg.depth,
                           num_heads=cfg.num_heads, dropout=cfg.dropout)
        else:
            if size % 4:
                raise UserError(f"data.image_size {size} must be a multiple of 4 for SAG-ViT's patch grid")
            net = SAGViT(num_classes=classes, image_size=size, dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                         graph=cfg.graph, k=cfg.k, backbone_weights=cfg.backbone_weights, dropout=cfg.dropout,
                         attention=cfg.attention)
        return NormalisedImages(net)

    def fit_statistics(self, model: nn.Module, splits: Splits) -> None:
        images = splits.train.images
        model.mean.copy_(images.mean((0, 2, 3)))
        model.std.copy_(images.std((0, 2, 3)).clamp(min=1e-3))

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = model(batch["image"]).float()
        return F.cross_entropy(logits, batch["target"]), logits.detach()

    def metrics(self, info: dict[str, Any]) -> Metrics:
        return ClassificationMetrics(len(info["classes"]))

    @torch.no_grad()
    def predict(self, model: nn.Module, *, recipe: ImageGraphRecipe, info: dict[str, Any], input_path: Path,
                output_path: Path, device: torch.device, plot: bool = False) -> list[Path]:
        """`file, predicted, probability` per image (one image file or a folder of them)."""
        if output_path.suffix.lower() != ".csv":
            raise UserError(f"--output {output_path}: write predictions to a .csv file")
        if input_path.is_dir():
            paths = sorted(p for p in input_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise UserError(f"--input {input_path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        else:
            paths = [input_path]
        images = torch.cat([resize(read_image(p)[None], info["image_size"]) for p in paths])
        model.eval()
        probs = torch.cat([torch.softmax(model(images[i : i + 64].to(device)).float(), -1).cpu()
                           for i in range(0, len(images), 64)])
        confidence, predicted = probs.max(-1)
        table = pd.DataFrame({"file": [p.name for p in paths], "predicted": [info["classes"][i] for i in predicted],
                              "probability": confidence.numpy().round(6)})
        with atomic_path(output_path) as tmp:
            table.to_csv(tmp, index=False)
        return [output_path]

    def evaluation_plot(self, model: nn.Module, dataset: Dataset, info: dict[str, Any], *, path: Path,
                        batch_size: int, device: torch.device) -> Path:
        return confusion_matrix_of(self, model, dataset, info, path=path, batch_size=batch_size, device=device)

    def demo_input(self, recipe: ImageGraphRecipe, info: dict[str, Any], workdir: Path) -> Path:
        """The first 8 test images as PNG files."""
        test = self.load_splits(recipe, source=info["source"]).test
        folder = workdir / "images"
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            from PIL import Image

            for i in range(min(8, len(test))):
                image, label = test[i]["image"], test[i]["target"]
                array = (image.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
                Image.fromarray(array).save(tmp / f"test{i:02d}_label{info['classes'][int(label)]}.png")
        return folder

