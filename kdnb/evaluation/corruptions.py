"""CIFAR-10-C-style corruptions on whole uint8 batches, plus a reader for the official files.

Robustness is reported on the corruptions of Hendrycks & Dietterich (2019). The severity
constants are CIFAR-10-C's own, from ``ImageNet-C/create_c/make_cifar_c.py`` in
hendrycks/robustness (not the harsher ImageNet-C ones), so that accuracies generated here are
comparable with the released CIFAR-10-C files (:func:`load_cifar10c` reads those when present).

Every corruption maps a uint8 batch (B,3,H,W) to a uint8 batch of the same shape, takes a
``severity`` in 1..5 and a ``seed`` (int or ``torch.Generator``) and is deterministic for a seed.
Random draws are made on the CPU, so results do not depend on the device of ``images``.
Float results go back to uint8 by truncation, as ``np.uint8`` does in ``make_cifar_c.py``
(a 1e-3 guard stops float32 round-off from turning e.g. 200.0 into 199).
Where a corruption is not bit-for-bit the original, its docstring says how it differs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

Seed = int | torch.Generator

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# CIFAR-10-C constants, severity 1..5, as in make_cifar_c.py (hendrycks/robustness).
GAUSSIAN_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # std of additive noise on [0,1] images
SHOT_NOISE_RATE = (500, 250, 100, 75, 50)  # Poisson photons per unit intensity
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of salt-and-pepper values
GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (disk radius, alias blur)
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE_FACTOR = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor before upscaling back
# Not part of CIFAR-10-C: side (pixels, for 32x32 images) of the one occluding square per image.
OCCLUSION_SIDE = (4, 8, 12, 16, 20)  # covers 1.6 %, 6.3 %, 14 %, 25 %, 39 % of the image

# Every corruption file shipped in CIFAR-10-C (Zenodo record 2535967), without the .npy suffix.
CIFAR10C_NAMES: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "brightness", "spatter",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate",
)


# ----------------------------------------------------------------------------- helpers


def _generator(seed: Seed) -> torch.Generator:
    """A CPU generator from an int seed (or the generator itself), so draws are reproducible."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        desc = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a uint8 tensor of shape (B,3,H,W), got {desc}")


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return int(severity)


def _param(table: tuple, severity: int):
    return table[_check_severity(severity) - 1]


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0,1] floats → uint8 by truncation, matching ``np.uint8(np.clip(x, 0, 1) * 255)``."""
    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 1e-3).clamp(max=255).to(torch.uint8)


def _rand(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


# ----------------------------------------------------------------------------- noise


def gaussian_noise(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Additive i.i.d. Gaussian noise per pixel and channel (std on the [0,1] scale)."""
    _check_images(images)
    std = _param(GAUSSIAN_NOISE_STD, severity)
    noise = torch.randn(images.shape, generator=_generator(seed)).to(images.device)
    return _to_uint8(_to_float(images) + std * noise)


def shot_noise(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Poisson (photon) noise: Poisson(x·c)/c per pixel and channel."""
    _check_images(images)
    rate = _param(SHOT_NOISE_RATE, severity)
    x = _to_float(images).cpu()
    noisy = torch.poisson(x * rate, generator=_generator(seed)) / rate
    return _to_uint8(noisy.to(images.device))


def impulse_noise(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Salt-and-pepper noise: each value is replaced with probability ``amount``, half by 0, half by 255.

    Differs from CIFAR-10-C in the sampler only: skimage's ``random_noise(mode="s&p")`` picks the
    replaced values with its own RNG; the fraction and the 50/50 salt/pepper split are the same.
    """
    _check_images(images)
    amount = _param(IMPULSE_NOISE_AMOUNT, severity)
    g = _generator(seed)
    flipped = _rand(images.shape, g, images.device) < amount
    salt = _rand(images.shape, g, images.device) < 0.5
    out = images.clone()
    out[flipped & salt] = 255
    out[flipped & ~salt] = 0
    return out


# ----------------------------------------------------------------------------- blur


def gaussian_blur(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Gaussian blur with CIFAR-10-C's sigma, via ``torchvision.transforms.v2.functional.gaussian_blur``.

    The kernel is truncated at 4 sigma and the border replicated, as skimage's ``gaussian`` (which
    CIFAR-10-C uses) does; replicate-padding first keeps torchvision's own reflect padding out of
    the result. Deterministic: ``seed`` is ignored.
    """
    _check_images(images)
    sigma = _param(GAUSSIAN_BLUR_SIGMA, severity)
    radius = int(4.0 * sigma + 0.5)
    x = F.pad(_to_float(images), (radius,) * 4, mode="replicate")
    x = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    return _to_uint8(x[..., radius:-radius, radius:-radius])


def _gaussian_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """CIFAR-10-C's anti-aliased disk: a normalised disk of ``radius`` on a 17x17 grid, blurred 3x3.

    Cropped to its non-zero support (zeros do not change the filtered image).
    """
    half = 8 if radius <= 8 else int(np.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk = disk / disk.sum()
    g = _gaussian_kernel_1d(ksize, alias_blur)
    kernel = F.conv2d(disk[None, None], torch.outer(g, g)[None, None], padding=ksize // 2)[0, 0]
    rows = torch.nonzero(kernel.abs().sum(1) > 0).flatten()
    r = int(max(half - rows.min().item(), rows.max().item() - half))
    return kernel[half - r : half + r + 1, half - r : half + r + 1].float()


def defocus_blur(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Defocus: filter with CIFAR-10-C's anti-aliased disk kernel (see :func:`defocus_kernel`).

    Hand-written because torchvision has no disk kernel; same kernel and border (reflect-101, as
    ``cv2.filter2D``) as the original, so it differs only by float rounding. ``seed`` is ignored.
    """
    _check_images(images)
    radius, alias_blur = _param(DEFOCUS_BLUR, severity)
    kernel = defocus_kernel(radius, alias_blur).to(images.device)
    r = kernel.shape[-1] // 2
    x = F.pad(_to_float(images), (r,) * 4, mode="reflect")
    weight = kernel.expand(3, 1, *kernel.shape)
    return _to_uint8(F.conv2d(x, weight, groups=3))


# ----------------------------------------------------------------------------- digital / photometric


def contrast(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Scale each channel's deviation from its own image mean by ``c``.

    Written out because torchvision's ``adjust_contrast`` pulls towards the *grayscale* mean,
    while CIFAR-10-C uses per-channel means. ``seed`` is ignored.
    """
    _check_images(images)
    c = _param(CONTRAST_FACTOR, severity)
    x = _to_float(images)
    means = x.mean(dim=(2, 3), keepdim=True)
    return _to_uint8((x - means) * c + means)


def brightness(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Add ``c`` to the HSV value channel (clipped at 1), keeping hue and saturation.

    CIFAR-10-C goes RGB→HSV→RGB with skimage. With hue and saturation fixed, RGB is linear in the
    value V = max(R,G,B), so the same result is ``rgb · min(V+c, 1) / V`` (black pixels, V = 0,
    become grey c); computed that way here, no colour-space round trip. ``seed`` is ignored.
    """
    _check_images(images)
    c = _param(BRIGHTNESS_SHIFT, severity)
    x = _to_float(images)
    v = x.amax(dim=1, keepdim=True)
    new_v = (v + c).clamp(max=1.0)
    scaled = x * (new_v / v.clamp(min=1e-12))
    return _to_uint8(torch.where(v > 0, scaled, new_v.expand_as(x)))


def jpeg_compression(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """JPEG round trip at CIFAR-10-C's quality via ``torchvision.transforms.v2.functional.jpeg``.

    Same libjpeg settings as PIL's ``save(..., "JPEG", quality=q)`` used by CIFAR-10-C (checked
    bit-identical in the tests). torchvision 0.29 deprecates its JPEG codec in favour of
    TorchCodec; that notice is silenced here (PIL would be the drop-in if it goes). ``seed`` is ignored.
    """
    _check_images(images)
    quality = _param(JPEG_QUALITY, severity)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchVision are deprecated", category=DeprecationWarning)
        return TF.jpeg(images.cpu(), quality).to(images.device)


def pixelate(images: torch.Tensor, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Downscale to ``int(H·c)`` and back with PIL's BOX filter, via torchvision's ``resize``.

    torchvision supports the BOX filter only on PIL images, so this loops over the batch; the
    output is the original's exactly (same library, same filter). ``seed`` is ignored.
    """
    _check_images(images)
    c = _param(PIXELATE_FACTOR, severity)
    h, w = images.shape[-2:]
    small = [int(h * c), int(w * c)]
    out = []
    for img in images.cpu():
        pil = TF.to_pil_image(img)
        pil = TF.resize(pil, small, interpolation=InterpolationMode.BOX)
        pil = TF.resize(pil, [h, w], interpolation=InterpolationMode.BOX)
        out.append(TF.pil_to_tensor(pil))
    return torch.stack(out).to(images.device)


def occlusion(images: torch.Tensor, severity: int, seed: Seed = 0, fill: int = 0) -> torch.Tensor:
    """One black square per image at a uniformly random position fully inside the image.

    Not part of CIFAR-10-C (added to probe reliance on local evidence). Side by severity:
    4, 8, 12, 16, 20 pixels on a 32x32 image (scaled by H/32 for other sizes).
    """
    _check_images(images)
    b, _, h, w = images.shape
    side = max(1, round(_param(OCCLUSION_SIDE, severity) * min(h, w) / 32))
    g = _generator(seed)
    top = torch.randint(0, h - side + 1, (b,), generator=g).to(images.device)
    left = torch.randint(0, w - side + 1, (b,), generator=g).to(images.device)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + side)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + side)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B,1,H,W)
    return images.masked_fill(mask, fill)


# ----------------------------------------------------------------------------- registry

Corruption = Callable[[torch.Tensor, int, Seed], torch.Tensor]

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
    "occlusion": occlusion,
}

# Corruptions whose output does not depend on the seed.
DETERMINISTIC: frozenset[str] = frozenset(
    {"gaussian_blur", "defocus_blur", "contrast", "brightness", "jpeg_compression", "pixelate"}
)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: Seed = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a uint8 batch (B,3,H,W)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    return CORRUPTIONS[name](images, severity, seed)


def load_cifar10c(
    directory: str | os.PathLike, name: str, severity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one corruption/severity of the official CIFAR-10-C release.

    ``<directory>/<name>.npy`` holds (50000,32,32,3) uint8, severities 1..5 in order of 10,000
    images each; ``labels.npy`` holds the matching labels. Returns uint8 images (N,3,32,32) and
    int64 labels. ``occlusion`` is not in CIFAR-10-C; generate it with :func:`corrupt`.
    """
    if name not in CIFAR10C_NAMES:
        raise ValueError(f"{name!r} is not a CIFAR-10-C corruption; it ships {list(CIFAR10C_NAMES)}")
    severity = _check_severity(severity)
    directory = Path(directory)
    paths = {"images": directory / f"{name}.npy", "labels": directory / "labels.npy"}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10-C file not found: {path} (download CIFAR-10-C.tar from "
                "https://zenodo.org/record/2535967 and pass the extracted folder)"
            )
    data = np.load(paths["images"], mmap_mode="r")
    labels = np.load(paths["labels"], mmap_mode="r")
    if data.ndim != 4 or data.shape[-1] != 3 or len(data) % len(SEVERITIES) or len(labels) != len(data):
        raise ValueError(f"{paths['images']}: unexpected shape {data.shape} (labels {labels.shape})")
    per = len(data) // len(SEVERITIES)
    sl = slice((severity - 1) * per, severity * per)
    images = torch.from_numpy(np.ascontiguousarray(data[sl].transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(np.asarray(labels[sl], dtype=np.int64))
