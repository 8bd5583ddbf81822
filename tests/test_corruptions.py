"""Corruptions: severity ordering, uint8 contract, seeding, fidelity to CIFAR-10-C, file reader."""

import colorsys
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from kdnb.evaluation import corruptions as C
from kdnb.evaluation.corruptions import CORRUPTIONS, DETERMINISTIC, corrupt, load_cifar10c

RANDOM = sorted(set(CORRUPTIONS) - DETERMINISTIC)


def natural_images(n: int = 32, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Random-phase images with a 1/f amplitude spectrum (the statistics of natural images)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amplitude = torch.where(radius > 0, 1.0 / radius.clamp(min=1e-12), torch.zeros(()))
    phase = torch.rand(n, 3, size, size, generator=g) * 2 * math.pi
    z = torch.fft.ifft2(amplitude * torch.exp(1j * phase)).real
    z = (z - z.mean((2, 3), keepdim=True)) / z.std((2, 3), keepdim=True)
    return ((0.5 + 0.18 * z).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return natural_images()


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_strictly_increases_change(images, name):
    diffs = [mad(corrupt(images, name, s, seed=0), images) for s in C.SEVERITIES]
    assert diffs[0] > 0.3, f"{name} severity 1 barely changes the images: {diffs}"
    assert all(b > a for a, b in zip(diffs, diffs[1:])), f"{name} not increasing: {diffs}"


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_uint8_shape_and_determinism(images, name, severity):
    out = corrupt(images, name, severity, seed=3)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, corrupt(images, name, severity, seed=3))
    assert torch.equal(images, natural_images()), "input was modified in place"


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_depend_on_seed(images, name):
    assert not torch.equal(corrupt(images, name, 3, seed=0), corrupt(images, name, 3, seed=1))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(corrupt(images, name, 3, seed=g1), corrupt(images, name, 3, seed=g2))


def test_random_set_is_what_we_expect():
    assert RANDOM == ["gaussian_noise", "impulse_noise", "occlusion", "shot_noise"]


def test_errors_list_allowed_values(images):
    with pytest.raises(ValueError, match="gaussian_noise"):
        corrupt(images, "fog", 1)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"\(1, 2, 3, 4, 5\)"):
            corrupt(images, "contrast", bad)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "contrast", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images[0], "contrast", 1)


# ----------------------------------------------------------------------------- fidelity


def test_gaussian_noise_std(images):
    grey = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    residual = corrupt(grey, "gaussian_noise", 5, seed=0).float() - 128
    assert residual.std().item() / 255 == pytest.approx(0.10, rel=0.03)


def test_shot_noise_variance():
    grey = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    out = corrupt(grey, "shot_noise", 5, seed=0).float() / 255
    expected_std = math.sqrt((128 / 255) / 50)  # Poisson(x·c)/c has variance x/c
    assert out.std().item() == pytest.approx(expected_std, rel=0.05)


def test_impulse_noise_fraction_and_values():
    grey = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    out = corrupt(grey, "impulse_noise", 5, seed=0)
    changed = out != 128
    assert changed.float().mean().item() == pytest.approx(0.07, rel=0.05)
    assert set(out[changed].unique().tolist()) == {0, 255}
    assert (out[changed] == 255).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_gaussian_blur_matches_skimage_definition(images):
    # skimage.filters.gaussian == scipy.ndimage.gaussian_filter(mode="nearest", truncate=4)
    for severity, sigma in zip(C.SEVERITIES, C.GAUSSIAN_BLUR_SIGMA):
        x = images[:8].numpy() / 255.0
        ref = ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        ref = np.uint8(np.clip(ref, 0, 1) * 255)
        diff = np.abs(corrupt(images[:8], "gaussian_blur", severity).numpy().astype(int) - ref)
        assert diff.max() <= 1, (severity, diff.max())


def test_defocus_kernels_and_filter(images):
    k5 = C.defocus_kernel(1.5, 0.1)  # 3x3 disk, anti-alias blur negligible → 3x3 box
    assert torch.allclose(k5[1:4, 1:4], torch.full((3, 3), 1 / 9), atol=1e-6)
    k4 = C.defocus_kernel(1.0, 0.2)  # 5-pixel "plus"
    assert torch.allclose(k4[1:4, 1:4], torch.tensor([[0, 0.2, 0], [0.2, 0.2, 0.2], [0, 0.2, 0]]), atol=1e-5)
    for severity, (r, a) in zip(C.SEVERITIES, C.DEFOCUS_BLUR):
        k = C.defocus_kernel(r, a)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        x = images[:4].numpy() / 255.0
        ref = np.stack([[ndimage.correlate(ch, k.double().numpy(), mode="mirror") for ch in im] for im in x])
        ref = np.uint8(np.clip(ref, 0, 1) * 255)  # mode="mirror" is cv2's BORDER_REFLECT_101
        diff = np.abs(corrupt(images[:4], "defocus_blur", severity).numpy().astype(int) - ref)
        assert diff.max() <= 1


def test_contrast_uses_per_channel_means(images):
    x = images[:4].numpy() / 255.0
    m = x.mean(axis=(2, 3), keepdims=True)
    ref = np.uint8(np.clip((x - m) * 0.15 + m, 0, 1) * 255)
    assert np.abs(corrupt(images[:4], "contrast", 5).numpy().astype(int) - ref).max() <= 1


def test_contrast_hand_example_truncates_like_np_uint8():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[0, 0] = torch.tensor([[0, 255], [0, 255]])  # mean 127.5
    x[0, 1] = 100  # constant channel: unchanged under per-channel means
    x[0, 2] = torch.tensor([[10, 30], [10, 30]])  # mean 20
    out = corrupt(x, "contrast", 1)[0]  # c = 0.75
    # (0 - 127.5)·0.75 + 127.5 = 31.875 → 31; 223.125 → 223; 12.5 → 12; 27.5 → 27
    assert out[0].tolist() == [[31, 223], [31, 223]]
    assert out[1].tolist() == [[100, 100], [100, 100]]
    assert out[2].tolist() == [[12, 27], [12, 27]]


def test_brightness_matches_hsv_round_trip(images):
    x = torch.cat([images[:2], torch.zeros(1, 3, 32, 32, dtype=torch.uint8)])  # include black pixels
    out = corrupt(x, "brightness", 5).numpy().astype(int)
    arr = x.numpy() / 255.0
    for b in range(arr.shape[0]):
        for i in range(0, 32, 3):
            for j in range(0, 32, 3):
                h, s, v = colorsys.rgb_to_hsv(*arr[b, :, i, j])
                rgb = np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0)))
                ref = np.uint8(np.clip(rgb, 0, 1) * 255).astype(int)
                assert np.abs(out[b, :, i, j] - ref).max() <= 1, (b, i, j)


def test_jpeg_is_bit_identical_to_pil(images):
    for severity, quality in zip(C.SEVERITIES, C.JPEG_QUALITY):
        ours = corrupt(images[:4], "jpeg_compression", severity)
        for img, out in zip(images[:4], ours):
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
            ref = np.array(Image.open(io.BytesIO(buf.getvalue())))
            assert np.array_equal(out.permute(1, 2, 0).numpy(), ref)


def test_pixelate_is_pil_box(images):
    for severity, c in zip(C.SEVERITIES, C.PIXELATE_FACTOR):
        ours = corrupt(images[:4], "pixelate", severity)
        for img, out in zip(images[:4], ours):
            pil = Image.fromarray(img.permute(1, 2, 0).numpy())
            ref = pil.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
            assert np.array_equal(out.permute(1, 2, 0).numpy(), np.array(ref))


def test_occlusion_is_one_square_of_the_scheduled_side():
    x = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    for severity, side in zip(C.SEVERITIES, C.OCCLUSION_SIDE):
        mask = corrupt(x, "occlusion", severity, seed=1) == 0
        assert torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 0], mask[:, 2])
        for m in mask[:, 0]:
            rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
            assert m.sum().item() == side * side
            assert len(rows) == len(cols) == side and rows[-1] - rows[0] == side - 1


# ----------------------------------------------------------------------------- CIFAR-10-C files


def test_load_cifar10c_slices_by_severity(tmp_path):
    n = 4  # per severity (10,000 in the real files)
    data = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        data[s * n : (s + 1) * n] = s + 1
    data[:, 0, 0, 2] = 77  # channel-last pixel, to check the transpose
    np.save(tmp_path / "contrast.npy", data)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(n, dtype=np.uint8), 5))
    x, y = load_cifar10c(tmp_path, "contrast", 3)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
    assert (x[:, 0] == 3).all() and (x[:, 2, 0, 0] == 77).all()
    assert y.dtype == torch.int64 and y.tolist() == list(range(n))


def test_load_cifar10c_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "pixelate.npy")):
        load_cifar10c(tmp_path, "pixelate", 1)
    with pytest.raises(ValueError, match="not a CIFAR-10-C corruption"):
        load_cifar10c(tmp_path, "occlusion", 1)
    with pytest.raises(ValueError, match="severity"):
        load_cifar10c(tmp_path, "pixelate", 9)
    assert set(CORRUPTIONS) - set(C.CIFAR10C_NAMES) == {"occlusion"}


def test_robustness_table_shape():
    from kdnb.evaluation.metrics import robustness, robustness_summary

    x, labels = natural_images(8), torch.arange(8) % 2
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    df = robustness(model, x, labels, lambda u: u.float() / 255, corruptions=["contrast", "occlusion"], severities=(1, 5))
    assert df[["corruption", "severity"]].values.tolist() == [
        ["clean", 0], ["contrast", 1], ["contrast", 5], ["occlusion", 1], ["occlusion", 5]
    ]
    assert df["accuracy"].between(0, 1).all()
    summary = robustness_summary(df)
    assert summary["pivot"].shape == (2, 2)
    assert summary["mean_corruption"] == pytest.approx(df["accuracy"][1:].mean())
