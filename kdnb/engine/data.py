"""CIFAR-10 (or another registered dataset, :mod:`kdnb.engine.datasets`) as uint8 tensors: sources,
a decode-once cache, the held-out split, batch augmentation.

Sources (``data_dir`` argument, else the ``KDNB_DATA_DIR`` environment variable, else ``data``):

1. ``data`` (default) — torchvision's CIFAR-10 download (canonical dataset; CIFAR-10 only);
2. the dataset's canonical pickle directory (``cifar-10-batches-py``, ``cifar-100-python``) or its parent;
3. an image-folder tree ``train/<class>/*.{png,jpg}`` + ``test/<class>/*``;
4. ``synthetic`` — a small deterministic, learnable 10-class set generated in memory.

Images are decoded once into uint8 tensors (N,3,32,32) and cached (``KDNB_CACHE_DIR``, default
``~/.cache/kdnb``), so a second load takes a second or two. Augmentation (random crop with
4-pixel zero padding, horizontal flip) and normalisation run on whole batches as tensor ops on
the training device, with random draws from a CPU generator so results do not depend on it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import DATASETS, DatasetSpec
from .errors import StorageError
from .runs import atomic_write, torch_bytes

DEFAULT_DATASET = "cifar10"
CIFAR10_CLASSES: tuple[str, ...] = DATASETS[DEFAULT_DATASET].classes
MEAN = DATASETS[DEFAULT_DATASET].mean
STD = DATASETS[DEFAULT_DATASET].std
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SYNTHETIC = "synthetic"
DEFAULT_DATA_DIR = "data"


class DataError(RuntimeError):
    """The data directory is missing or not in a layout kdnb can read."""


@dataclass
class Dataset:
    """The whole dataset as uint8 image tensors (N,3,32,32) and int64 labels."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    dataset: str = DEFAULT_DATASET

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images → float, normalised with this dataset's mean/std."""
        return normalize(x, self.mean, self.std)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The argument if given, else ``$KDNB_DATA_DIR``, else ``data`` (download target)."""
    if data_dir not in (None, ""):
        return str(data_dir)
    return os.environ.get("KDNB_DATA_DIR") or DEFAULT_DATA_DIR


def cache_dir() -> Path:
    return Path(os.environ.get("KDNB_CACHE_DIR") or Path.home() / ".cache" / "kdnb")


def _options_hint(path: str, spec: DatasetSpec | None = None) -> str:
    spec = spec or DATASETS[DEFAULT_DATASET]
    download = "; or the default 'data' (torchvision download)" if spec.name == DEFAULT_DATASET else ""
    return (
        f"{path!r} is not a {spec.label} directory. kdnb reads: a canonical '{spec.pickle_dir}' "
        "directory (or its parent); an image folder with train/<class>/*.png|jpg and test/<class>/*; "
        f"'synthetic'{download}. "
        "Choose with --data-dir / data_dir= or the KDNB_DATA_DIR environment variable "
        "(and the dataset with --set dataset=…)."
    )


# ---------------------------------------------------------------- synthetic
def _hue_to_rgb(h: float) -> torch.Tensor:
    """Fully saturated colour of hue ``h`` in [0,1) (HSV with S=V=1)."""
    k = torch.tensor([5.0, 3.0, 1.0])
    k = (k + h * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def make_synthetic(n_train: int = 5000, n_test: int = 1000, num_classes: int = 10, seed: int = 1234,
                   dataset: str = DEFAULT_DATASET) -> Dataset:
    """A learnable toy CIFAR: a class-coloured 12×12 textured patch at a random place on grey noise.

    Deterministic (its own fixed seed), spatially localised (so Grad-CAM has something to find)
    and learnable in a couple of epochs by tiny networks.
    """
    g = torch.Generator().manual_seed(seed)
    # Each class: its own colour (evenly spaced hues) times its own binary texture.
    hues = torch.arange(num_classes) / num_classes
    colours = torch.stack([_hue_to_rgb(h) for h in hues.tolist()]) * 200 + 40  # (K,3)
    textures = 0.6 + 0.4 * (torch.rand(num_classes, 1, 12, 12, generator=g) > 0.5).float()
    templates = colours[:, :, None, None] * textures  # (K,3,12,12)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = torch.rand(n, 1, 32, 32, generator=g).expand(n, 3, 32, 32) * 60 + 70
        x = x.clone()
        pos = torch.randint(0, 21, (n, 2), generator=g)
        for i in range(n):
            r, c = pos[i].tolist()
            x[i, :, r : r + 12, c : c + 12] = templates[y[i]] + torch.randn(3, 12, 12, generator=g) * 15
        return x.clamp(0, 255).to(torch.uint8), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    classes = tuple(f"class{c}" for c in range(num_classes))
    return Dataset(train_x, train_y, test_x, test_y, classes, f"synthetic ({n_train} train / {n_test} test)", dataset)


# ---------------------------------------------------------------- canonical pickles
def _find_batches_dir(path: Path, spec: DatasetSpec | None = None) -> Path | None:
    spec = spec or DATASETS[DEFAULT_DATASET]
    for cand in (path, path / spec.pickle_dir):
        if all((cand / f).is_file() for f in (*spec.train_files, *spec.test_files)):
            return cand
    return None


def _load_batches(d: Path, spec: DatasetSpec | None = None) -> Dataset:
    spec = spec or DATASETS[DEFAULT_DATASET]

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(d / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
            return (np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, spec.image_size, spec.image_size),
                    np.asarray(entry[spec.label_key]))
        except Exception as exc:  # truncated download, a foreign file
            raise DataError(f"{d / name} is damaged ({type(exc).__name__}: {str(exc)[:80]}); delete {d} "
                            f"and download {spec.label} again") from None

    parts = [read(f) for f in spec.train_files]
    tests = [read(f) for f in spec.test_files]
    train_y = np.concatenate([p[1] for p in parts])
    if train_y.max(initial=0) >= spec.num_classes:
        raise DataError(f"{d}: labels up to {int(train_y.max())}, but {spec.label} has {spec.num_classes} classes: "
                        "is this the right dataset (--set dataset=…)?")
    return Dataset(
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(np.concatenate([t[0] for t in tests])), torch.from_numpy(np.concatenate([t[1] for t in tests])).long(),
        spec.classes, f"canonical {spec.label} ({d})", spec.name,
    )


# ---------------------------------------------------------------- image folder
def _list_image_folder(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = []
    for label, cls in enumerate(classes):
        for entry in sorted(os.scandir(split_dir / cls), key=lambda e: e.name):
            if entry.name.lower().endswith(IMAGE_SUFFIXES):
                files.append((Path(entry.path), label))
    return classes, files


SHOWN_BAD_FILES = 5  # how many unreadable files a DataError lists by name (it always gives the count)


def _decode_files(files: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every file; a file that cannot be read, is not an image or is not 32×32 is collected,
    and all of them are reported together (first few by name, and the count), so a user with
    60,000 files learns which ones to replace instead of reading a codec traceback."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    def one(item: tuple[Path, int]) -> torch.Tensor | str:
        try:
            img = decode_image(read_file(str(item[0])), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError, ValueError) as exc:
            return f"{item[0]}: unreadable ({str(exc).splitlines()[0][:80] or type(exc).__name__})"
        if img.shape != (3, 32, 32):
            return f"{item[0]}: {tuple(img.shape[1:])} pixels, not 32×32"
        return img

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            images = list(pool.map(one, files, chunksize=256))
    bad = [r for r in images if isinstance(r, str)]
    if bad:
        more = len(bad) - SHOWN_BAD_FILES
        shown = "; ".join(bad[:SHOWN_BAD_FILES]) + (f"; … and {more} more" if more > 0 else "")
        raise DataError(f"{len(bad)} of {len(files)} image files cannot be used: {shown}. "
                        "Replace or remove them (kdnb needs 32×32 PNG or JPEG images) and load again.")
    return torch.stack(images), torch.tensor([lab for _, lab in files], dtype=torch.long)


def _load_image_folder(path: Path, spec: DatasetSpec | None = None) -> Dataset:
    spec = spec or DATASETS[DEFAULT_DATASET]
    train_classes, train_files = _list_image_folder(path / "train")
    test_classes, test_files = _list_image_folder(path / "test")
    if not train_files or not test_files:
        raise DataError(_options_hint(str(path), spec) + " (found train/ and test/ but no .png/.jpg images in class folders)")
    if train_classes != test_classes:
        raise DataError(f"{path}: train/ and test/ have different class folders: {train_classes} vs {test_classes}")
    if len(train_classes) > spec.num_classes:  # fewer is a subset of the classes; more cannot be trained
        raise DataError(f"{path} has {len(train_classes)} class folders, {spec.label} has {spec.num_classes}: "
                        "choose the matching dataset with --set dataset=… (registered: "
                        f"{', '.join(DATASETS)})")
    sample = train_files[:: max(1, len(train_files) // 50)]
    stats = [len(train_files), len(test_files), max(os.stat(f).st_mtime_ns for f, _ in sample)]
    key = hashlib.sha1(f"{path.resolve()}|{stats}".encode()).hexdigest()[:16]
    cache = cache_dir() / f"imagefolder-{key}.pt"
    source = f"image folder {path} ({len(train_files)} train / {len(test_files)} test)"
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            return Dataset(d["train_x"], d["train_y"], d["test_x"], d["test_y"], tuple(train_classes), source, spec.name)
        except Exception as exc:  # a damaged cache entry (disk full, a foreign file): decode again
            warnings.warn(f"kdnb: ignoring the damaged decode cache {cache} ({type(exc).__name__}); decoding again",
                          stacklevel=2)
    train_x, train_y = _decode_files(train_files)
    test_x, test_y = _decode_files(test_files)
    try:

        blob = torch_bytes({"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y})
        atomic_write(cache, lambda f: f.write(blob))
    except (OSError, StorageError):
        pass  # a read-only cache only costs a re-decode next time
    return Dataset(train_x, train_y, test_x, test_y, tuple(train_classes), source, spec.name)


def download_cifar10(path: str | os.PathLike) -> Path:
    """Download canonical CIFAR-10 with torchvision into ``path`` (nothing if it is there already)."""
    from torchvision.datasets import CIFAR10

    path = Path(path)
    if _find_batches_dir(path) is None:
        try:
            CIFAR10(str(path), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(
                f"could not download CIFAR-10 into {str(path)!r} ({exc.__class__.__name__}: {exc}). "
                "Offline? Point --data-dir / data_dir / KDNB_DATA_DIR at a local cifar-10-batches-py or "
                "image-folder copy, or use 'synthetic' (the smoke profile)."
            ) from None
    return path / "cifar-10-batches-py"


def load_dataset(
    data_dir: str | os.PathLike | None = None, *, synthetic_train: int = 5000, synthetic_test: int = 1000,
    dataset: str = DEFAULT_DATASET,
) -> Dataset:
    """Load ``dataset`` (CIFAR-10 by default; or its synthetic stand-in) from the source ``data_dir`` names."""
    spec = DATASETS[dataset]
    name = resolve_data_dir(data_dir)
    if name == SYNTHETIC:
        return make_synthetic(synthetic_train, synthetic_test, num_classes=spec.num_classes, dataset=spec.name)
    path = Path(name).expanduser()
    batches = _find_batches_dir(path, spec) if path.is_dir() else None
    if batches is not None:
        return _load_batches(batches, spec)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _load_image_folder(path, spec)
    if (spec.name == DEFAULT_DATASET and path.name == DEFAULT_DATA_DIR
            and (not path.exists() or not any(path.iterdir()))):  # ./data: download
        return _load_batches(download_cifar10(path))
    if not path.exists():
        raise DataError(f"data directory {name!r} does not exist. " + _options_hint(name, spec))
    raise DataError(_options_hint(name, spec))


# ---------------------------------------------------------------- split
def stratified_split(
    labels: torch.Tensor, val_size: int, train_size: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train_idx, val_idx) from the training set, stratified by class and seeded.

    ``val_size`` images (equal per class, remainder to the first classes) are held out for early
    stopping and model selection; ``train_size`` optionally keeps a stratified subset of the rest.
    """
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    n_cls = len(classes)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]

    def quota(total: int) -> list[int]:
        return [total // n_cls + (1 if i < total % n_cls else 0) for i in range(n_cls)]

    val_q = quota(val_size)
    if any(q >= len(idx) for q, idx in zip(val_q, per_class)):
        raise DataError(f"val_size={val_size} leaves no training images in some class ({len(labels)} images)")
    val = torch.cat([idx[:q] for q, idx in zip(val_q, per_class)])
    rest = [idx[q:] for q, idx in zip(val_q, per_class)]
    if train_size is not None:
        avail = sum(len(r) for r in rest)
        if train_size > avail:
            raise DataError(f"train_size={train_size} exceeds the {avail} training images left after validation")
        rest = [r[:q] for q, r in zip(quota(train_size), rest)]
    train = torch.cat(rest)
    return train.sort().values, val.sort().values


def balanced_subset(labels: torch.Tensor, n: int | None, seed: int = 0) -> torch.Tensor:
    """Indices (ascending) of a seeded sample with ``n / num_classes`` images of every class; all of
    ``labels`` when ``n`` is None or covers them.

    Every evaluation subset goes through here, so a subset is representative whatever the order of
    the files on disk (the image-folder loader returns each split sorted by class: "the first n"
    would be one class) and every model is scored on the same images."""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    classes = torch.unique(labels)
    if n < 1 or n % len(classes):
        raise DataError(f"a subset of {n} images cannot hold the same number of each of the {len(classes)} "
                        f"classes: use a multiple of {len(classes)} (e.g. {max(1, n // len(classes)) * len(classes)})")
    per_class = n // len(classes)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {int(c)} has {len(idx)} images, fewer than the {per_class} per class a subset of "
                            f"{n} needs: use at most {len(classes) * min(int((labels == k).sum()) for k in classes)}")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picked).sort().values


def class_counts(labels: torch.Tensor, classes: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Images per class name (every class listed, zeros included): a subset's composition, stated."""
    counts = torch.bincount(labels.long(), minlength=len(classes)).tolist()
    return {name: int(k) for name, k in zip(classes, counts)}


# ---------------------------------------------------------------- batches
def epoch_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> list[torch.Tensor]:
    """Shuffled index batches for one epoch (the last short batch dropped: BN needs > 1 sample)."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def draw_augmentation(batch: int, generator: torch.Generator, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (B,2) and flip flags (B,) for one batch, drawn on the CPU generator."""
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    return offsets, flips


def apply_augmentation(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding, as torchvision's RandomCrop) + horizontal flip with given draws.

    ``offsets``/``flips`` live on ``x``'s device, so nothing here synchronises the host.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B,h)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B,w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B,h,w,C)
    return out.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop + horizontal flip on a whole batch, drawing from ``generator`` (CPU)."""
    offsets, flips = draw_augmentation(len(x), generator, padding)
    return apply_augmentation(x, offsets.to(x.device), flips.to(x.device), padding)


@dataclass
class EpochPlan:
    """Everything random about one epoch's batches, drawn up front and moved to the device once.

    The draws come from the generator in exactly the order the per-step code used (the
    permutation, then each batch's offsets and flips), so a CPU run is unchanged; on a GPU the
    training step then needs no host-to-device copy and no host read.
    """
    index: torch.Tensor  # (steps, B) sample indices
    offsets: torch.Tensor  # (steps, B, 2) crop offsets
    flips: torch.Tensor  # (steps, B) horizontal flips

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device | str) -> EpochPlan:
        return EpochPlan(*(t.to(device, non_blocking=True) for t in (self.index, self.offsets, self.flips)))


def plan_epoch(n: int, batch_size: int, generator: torch.Generator, padding: int = 4) -> EpochPlan:
    """Batch order and augmentation draws for one epoch (full batches only, as :func:`epoch_batches`)."""
    batches = epoch_batches(n, batch_size, generator)
    draws = [draw_augmentation(len(b), generator, padding) for b in batches]
    if not batches:
        raise DataError(f"{n} training images are fewer than one batch of {batch_size}")
    return EpochPlan(torch.stack(batches), torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws]))


_CONSTANTS: dict[tuple[str, torch.device], torch.Tensor] = {}


def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Small constant tensors cached per device (no host-to-device copy per step)."""
    key = (values, torch.device(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, device=device).view(1, 3, 1, 1)
    return _CONSTANTS[key]


def normalize(x: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 (B,3,H,W) → float32 normalised with a dataset's mean/std (CIFAR-10's by default)."""
    return (x.float() / 255.0 - _constant(tuple(mean), x.device)) / _constant(tuple(std), x.device)
