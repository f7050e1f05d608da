"""Image classification (CIFAR-100, SVHN, Food-101, ImageNet-R) on mmengine's runner.

Loaders read each dataset's real release format: CIFAR-100's python pickles, SVHN's
``*_32x32.mat`` files, Food-101's ``images/`` tree with ``meta/{train,test}.txt``, and
ImageNet-R's class folders with a split file (``splits/imagenet_r.json``: the paper's
24,000 / 6,000 split, listed by relative path). Head as in the paper: BatchNorm1d without
affine, then Linear, on the backbone's pooled features.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from catalog import Cell, TaskSpec, get_backbone

from .common import MEAN, STD, CheckCache, loader, open_image
from .registry import DataFormatError, Kind, register_kind


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataFormatError(f"{what} not found: expected {path}")
    return path


def _unpickle(path: Path, what: str, keys: Sequence[bytes]) -> dict:
    """A pickled dict holding ``keys``; anything else names the file that is wrong."""
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise DataFormatError(f"{path}: not a {what} ({exc!r})") from None
    missing = [k.decode() for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataFormatError(f"{path}: not a {what}: no {', '.join(missing)}")
    return data


def _any_case(path: Path, listings: dict[Path, dict[str, Path]]) -> Path:
    """``path``, or the file of the same name whose suffix is spelled in another case
    (``x.JPG`` for ``x.jpg``; ``listings`` caches each folder's names); missing: the
    expected path in the error."""
    if path.exists():
        return path
    if path.parent not in listings:
        listings[path.parent] = ({f"{p.stem}{p.suffix.lower()}": p for p in path.parent.iterdir()}
                                 if path.parent.is_dir() else {})
    found = listings[path.parent].get(f"{path.stem}{path.suffix.lower()}")
    if found is None:
        raise DataFormatError(f"image not found: expected {path}")
    return found


def _rgb(img: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB (16-bit greyscale scaled to 8 bits, not clipped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
    return img.convert("RGB")


class ArrayDataset(Dataset):
    """Images (N, H, W, 3) uint8 + labels (N,), flipped at random when training. ``indices``:
    keep the first N only (a smoke run's few validation images)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, train: bool,
                 source: Path, indices: int | None = None):
        if len(images) != len(labels):
            raise DataFormatError(f"{source}: {len(images)} images but {len(labels)} labels")
        if not len(labels):
            raise DataFormatError(f"{source}: no images (an empty split)")
        if indices is not None:
            images, labels = images[:indices], labels[:indices]
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataFormatError(f"{source}: labels must lie in [0, {num_classes}), found "
                                  f"{int(labels.min())}..{int(labels.max())}")
        self.images, self.labels, self.train = images, labels.astype(np.int64), train
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]  # (H, W, 3) uint8

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = torch.from_numpy(np.ascontiguousarray(self.image(i))).permute(2, 0, 1)
        if self.train and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return {"inputs": img, "data_samples": int(self.labels[i])}


@DATASETS.register_module()
class CIFAR100(ArrayDataset):
    """``cifar-100-python/{train,test,meta}``: pickled dicts, rows of 3072 bytes (R, G, B planes)."""

    def __init__(self, data_root: str, split: str, train: bool = False,
                 indices: int | None = None):
        base = Path(data_root) / "cifar-100-python"
        path = _need(base / ("train" if split == "train" else "test"), "CIFAR-100 batch")
        meta = _need(base / "meta", "CIFAR-100 meta file")
        batch = _unpickle(path, "CIFAR-100 python batch", (b"data", b"fine_labels"))
        names = _unpickle(meta, "CIFAR-100 meta file", (b"fine_label_names",))[b"fine_label_names"]
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"fine_labels"])
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataFormatError(f"{path}: expected rows of 3072 bytes, got shape {data.shape}")
        super().__init__(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels, len(names),
                         train, path, indices)


@DATASETS.register_module()
class SVHN(ArrayDataset):
    """``{train,test}_32x32.mat``: X (32, 32, 3, N) uint8, y (N, 1) with 10 standing for 0."""

    def __init__(self, data_root: str, split: str, train: bool = False,
                 indices: int | None = None):
        from scipy.io import loadmat

        path = _need(Path(data_root) / f"{'train' if split == 'train' else 'test'}_32x32.mat",
                     "SVHN .mat file")
        try:
            mat = loadmat(path)
            x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
        except (ValueError, KeyError, OSError) as exc:
            raise DataFormatError(f"{path}: not an SVHN .mat file ({exc!r})") from exc
        y[y == 10] = 0
        super().__init__(np.transpose(x, (3, 0, 1, 2)), y, 10, train, path, indices)


class _FolderDataset(ArrayDataset):
    """Image files, each decoded when read and resized to ``size`` (the backbone's input): a
    release's ~100k images would not fit in memory decoded. Each file is checked to decode
    when the dataset is built (and remembered while it stays unchanged)."""

    def _load(self, root: Path, files: Sequence[str], classes: list[str], size: int,
              train: bool, source: Path, indices: int | None):
        index = {c: i for i, c in enumerate(classes)}
        paths, labels, listings = [], [], {}
        with CheckCache("image-folder", root) as cache:  # each file decoded once, ever
            for rel in files[:indices]:
                cls = rel.split("/")[0]
                if cls not in index:
                    raise DataFormatError(f"{source}: '{rel}' names unknown class '{cls}'")
                path = _any_case(root / rel, listings)
                if cache.get(path) is None:
                    open_image(path)
                    cache.put(True, path)
                paths.append(path)
                labels.append(index[cls])
        self.size = size
        super().__init__(np.asarray(paths, dtype=object), np.asarray(labels), len(classes),
                         train, source)

    def image(self, i: int) -> np.ndarray:
        img = _rgb(open_image(self.images[i]))
        return np.asarray(img.resize((self.size, self.size), Image.BILINEAR))


@DATASETS.register_module()
class Food101(_FolderDataset):
    """``food-101/images/<class>/<id>.jpg`` with ``meta/classes.txt`` and ``meta/{train,test}.txt``."""

    def __init__(self, data_root: str, split: str, train: bool = False, size: int = 32,
                 indices: int | None = None):
        base = Path(data_root) / "food-101"
        classes = _need(base / "meta" / "classes.txt", "Food-101 class list").read_text().split()
        listing = _need(base / "meta" / f"{'train' if split == 'train' else 'test'}.txt",
                        "Food-101 split list")
        files = [f"{line}.jpg" for line in listing.read_text().split()]
        self._load(base / "images", files, classes, size, train, listing, indices)


@DATASETS.register_module()
class ImageNetR(_FolderDataset):
    """``imagenet-r/<wnid>/<file>.jpg``; the split file lists the 24,000 / 6,000 paths."""

    def __init__(self, data_root: str, split: str, train: bool = False, size: int = 32,
                 split_file: str | None = None, indices: int | None = None):
        base = Path(data_root) / "imagenet-r"
        split_path = Path(split_file) if split_file else base / "split.json"
        try:
            spec = json.loads(_need(split_path, "ImageNet-R split file").read_text())
            files = spec["train" if split == "train" else "test"]
            classes = spec["classes"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataFormatError(f"{split_path}: expected JSON with 'classes', 'train', 'test' "
                                  f"({exc!r})") from exc
        self._load(base, files, classes, size, train, split_path, indices)


def make_imagenet_r_split(data_root: str, train: int = 24_000, test: int = 6_000,
                          seed: int = 0) -> dict[str, list[str]]:
    """The paper's ImageNet-R split from a release folder: every image listed in sorted
    order, shuffled with ``seed``, the first ``train`` for training and the next ``test``."""
    base = Path(data_root) / "imagenet-r"
    if not base.is_dir():
        raise DataFormatError(f"ImageNet-R folder not found: expected {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    files = sorted(str(p.relative_to(base)) for c in classes for p in (base / c).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < train + test:
        raise DataFormatError(f"{base}: {len(files)} images, fewer than {train} + {test}")
    order = np.random.default_rng(seed).permutation(len(files))
    return {"classes": classes, "train": [files[i] for i in order[:train]],
            "test": [files[i] for i in order[train:train + test]]}


@MODELS.register_module()
class PooledClassifier(BaseModel):
    """Backbone (with its PEFT method) -> pooled features -> BatchNorm1d(affine=False) -> Linear."""

    def __init__(self, backbone: str, method: str, task: str, num_classes: int, img_size: int,
                 options: dict[str, Any] | None = None, drop_path_rate: float = 0.0,
                 pretrained: str | None = None):
        super().__init__(data_preprocessor=dict(type="ImgDataPreprocessor", mean=MEAN, std=STD))
        from .backbone import ParaXBackbone

        # The wrapper's init_weights keeps the constructed (pretrained) weights: the runner's
        # init_weights must not reach timm's own re-initialisation.
        self.backbone = ParaXBackbone(backbone, method, task, options, pretrained, drop_path_rate)
        self.host = self.backbone.host
        self.img_size = img_size
        dim = self.host.stages[-1].dim
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))

    def pooled(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the backbone's pooled features, at the backbone's input size."""
        if inputs.shape[-1] != self.img_size:
            inputs = F.interpolate(inputs, size=(self.img_size, self.img_size), mode="bilinear",
                                   align_corners=False)
        return self.host.forward_pooled(inputs)

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None,
                mode: str = "tensor"):
        """``data_samples`` holds the labels (B,)."""
        logits = self.head(self.pooled(inputs))
        if mode == "loss":
            return {"loss": F.cross_entropy(logits, data_samples)}
        if mode == "predict":
            return list(zip(logits.argmax(-1).tolist(), data_samples.tolist()))
        return logits


@METRICS.register_module()
class TopOneAccuracy(BaseMetric):
    default_prefix = ""

    def process(self, data_batch: Any, data_samples: Sequence[tuple[int, int]]) -> None:
        self.results.extend(int(p == t) for p, t in data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {"top1": 100.0 * sum(results) / max(len(results), 1)}


# layout format -> the dataset class (registered above) that reads it
FORMATS = {"cifar100": "CIFAR100", "svhn": "SVHN", "food101": "Food101", "imagenet_r": "ImageNetR"}
PROFILES = {
    # spec §5's rule at the mini batch (lr 0.1 x 32 / 256, a fifth of the schedule warm-up,
    # cosine). A larger rate diverges for the adapters whose branch starts at full scale.
    "mini": dict(batch=32, iters=36, warmup=0.2, lr=0.0125, weight_decay=0.0),
    # spec §5: SGD lr 0.1 x 1024 / 256, 100 epochs with 20 warm-up epochs, cosine.
    "paper": dict(batch=1024, iters=None, warmup=None, lr=0.4, weight_decay=0.0),
}
PAPER_DROP_PATH = {"imagenet_r": 0.1, "cifar100": 0.0, "svhn": 0.0, "food101": 0.05}


def _dataset(spec: TaskSpec, root: str, split: str, train: bool,
             size: int | None = None) -> dict[str, Any]:
    """``size``: the side image files are decoded at (the array formats are 32 x 32)."""
    cfg = dict(type=FORMATS[spec.layout.format], data_root=root, split=split, train=train)
    if size is not None and issubclass(DATASETS.get(cfg["type"]), _FolderDataset):
        cfg["size"] = size
    return cfg


def check(spec: TaskSpec, root: str) -> None:
    """Both splits load: every image decodes, every label is in range."""
    from mmengine.registry import DATASETS as registry

    if not Path(root).is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    for split in ("train", "test"):
        registry.build(_dataset(spec, root, split, False))


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    p = dict(PROFILES[cell.profile])
    paper = cell.profile == "paper"
    loop: dict[str, Any]
    if paper:
        loop = dict(type="EpochBasedTrainLoop", max_epochs=100, val_begin=101)
        schedule = [dict(type="LinearLR", start_factor=1e-3, by_epoch=True, begin=0, end=20,
                         convert_to_iter_based=True),
                    dict(type="CosineAnnealingLR", by_epoch=True, begin=20, end=100, eta_min=0.0,
                         convert_to_iter_based=True)]
    else:
        iters = cell.iters if cell.iters is not None else p["iters"]
        warmup = max(1, round(p["warmup"] * iters))
        loop = dict(type="IterBasedTrainLoop", max_iters=iters, val_begin=iters + 1)
        schedule = [dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0,
                         end=warmup),
                    dict(type="CosineAnnealingLR", by_epoch=False, begin=warmup,
                         end=max(iters, warmup + 1), eta_min=0.0)]
    weight_decay = 1e-4 if paper and cell.task == "imagenet_r" else p["weight_decay"]

    def split_loader(split: str, train: bool) -> dict[str, Any]:
        size = get_backbone(cell.backbone).input_size
        return loader(p["batch"], _dataset(spec, cell.data_root, split, train, size), train, paper,
                      collate_fn=dict(type="default_collate"))

    return dict(
        model=dict(type="PooledClassifier", backbone=cell.backbone, method=cell.method,
                   task=cell.task, num_classes=spec.layout.num_classes,
                   img_size=get_backbone(cell.backbone).input_size, options=dict(cell.options),
                   drop_path_rate=PAPER_DROP_PATH.get(cell.task, 0.0) if paper else 0.0,
                   pretrained=cell.pretrained),
        train_dataloader=split_loader("train", True),
        val_dataloader=split_loader("test", False),
        val_evaluator=dict(type="TopOneAccuracy"),
        train_cfg=loop,
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(
            type="SGD", lr=p["lr"], momentum=0.9, weight_decay=weight_decay, fused=True)),
        param_scheduler=schedule,
    )


def write(spec: TaskSpec, root: Path, seed: int = 0, **sizes: int) -> Path:
    """Object-centric synthetic images in the spec's release format."""
    from .synthetic import writers

    return writers.CLASSIFICATION_WRITERS[spec.layout.format](root, seed=seed, **sizes)


register_kind("classification", Kind(build_config, check, write))
