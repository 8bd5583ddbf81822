"""Data: sources, clear errors, cache, the held-out split and batch augmentation."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdnb.engine.data import (
    DataError,
    augment,
    epoch_batches,
    load_dataset,
    make_synthetic,
    normalize,
    resolve_data_dir,
    stratified_split,
)


def test_split_is_disjoint_stratified_and_seeded():
    labels = torch.arange(1000) % 10
    tr, va = stratified_split(labels, val_size=100, train_size=500, seed=0)
    assert len(va) == 100 and len(tr) == 500
    assert not set(tr.tolist()) & set(va.tolist())
    assert torch.all(labels[va].bincount() == 10) and torch.all(labels[tr].bincount() == 50)
    tr2, va2 = stratified_split(labels, 100, 500, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    _, va3 = stratified_split(labels, 100, 500, seed=1)
    assert not torch.equal(va, va3)
    # the subset only shrinks the training part: validation is the same images
    _, va_full = stratified_split(labels, 100, None, seed=0)
    assert torch.equal(va, va_full)
    with pytest.raises(DataError, match="train_size"):
        stratified_split(labels, 100, 10_000, seed=0)


def test_train_val_test_never_overlap_on_real_layout():
    ds = make_synthetic(600, 100)
    tr, va = stratified_split(ds.train_y, 100, None, 0)
    assert len(set(tr.tolist()) | set(va.tolist())) == 600 and not set(tr.tolist()) & set(va.tolist())
    # the test images are a separate set: none is a copy of a training image
    train_set = {bytes(x.numpy().tobytes()) for x in ds.train_x}
    assert not any(bytes(x.numpy().tobytes()) in train_set for x in ds.test_x)


def test_augmentation_keeps_shape_and_labels_and_flips_about_half():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, g, padding=0)  # no crop: every image is itself or its mirror
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert torch.all(same | flipped)  # image i stays image i: labels stay valid
    assert 0.45 < flipped.float().mean().item() < 0.55
    crop = augment(x[:200], torch.Generator().manual_seed(1))
    # a padded crop shifts by at most 4 px: each output row-block appears in the zero-padded input
    padded = torch.nn.functional.pad(x[:200], (4, 4, 4, 4))
    for i in range(20):
        found = any(
            torch.equal(crop[i], window) or torch.equal(crop[i], window.flip(2))
            for r in range(9) for c in range(9)
            for window in [padded[i, :, r:r + 32, c:c + 32]]
        )
        assert found
    assert torch.equal(augment(x[:8], torch.Generator().manual_seed(5)), augment(x[:8], torch.Generator().manual_seed(5)))


def test_normalize_and_batches():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(x)
    assert out.dtype == torch.float32
    want = [(1 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, (1 - 0.4465) / 0.2616]
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), want, rtol=1e-5)
    b = epoch_batches(130, 64, torch.Generator().manual_seed(0))
    assert [len(i) for i in b] == [64, 64] and len(set(torch.cat(b).tolist())) == 128


def _write_image_folder(root: Path, n_per_class: int = 3):
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g), str(d / f"{i}.png"))


def test_image_folder_source_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path / "cache"))
    _write_image_folder(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs")
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.classes == ("cat", "dog")
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    from torchvision.io import read_image
    assert torch.equal(ds.train_x[3], read_image(str(tmp_path / "imgs" / "train" / "dog" / "0.png")))
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1
    again = load_dataset(tmp_path / "imgs")
    assert torch.equal(again.train_x, ds.train_x)


def test_canonical_batches_source(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    ds = load_dataset(tmp_path)  # the parent works too
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.classes[0] == "airplane"


def test_bad_directories_name_the_path_and_the_options(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist.*KDNB_DATA_DIR"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="junk.*not a CIFAR-10 directory"):
        load_dataset(tmp_path / "junk")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no .png/.jpg images"):
        load_dataset(tmp_path / "empty")
    monkeypatch.setenv("KDNB_DATA_DIR", "synthetic")
    assert resolve_data_dir(None) == "synthetic" and resolve_data_dir("x") == "x"


def test_damaged_image_files_are_all_named_and_nothing_is_cached(tmp_path, monkeypatch, capsys):
    """Truncated, non-image and wrongly sized files: one message with the first few paths and the
    count, no partial decode left in the cache, and from the CLI exit 2 without a traceback."""
    from kdnb.cli import main

    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    _write_image_folder(root)
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "train" / "cat" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "train" / "dog" / "2.png").write_text("not an image")
    from torchvision.io import write_png
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / "test" / "cat" / "00.png"))  # listed first
    for i in range(6):  # more than the message lists by name
        (root / "test" / "cat" / f"junk{i}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError) as err:
        load_dataset(root)
    msg = str(err.value)
    assert msg.startswith("2 of 6 image files cannot be used") and "train/cat/1.png: unreadable" in msg
    assert "train/dog/2.png: unreadable" in msg
    assert not list((tmp_path / "cache").glob("*"))  # the train split failed: nothing decoded was kept
    (root / "train" / "cat" / "1.png").write_bytes(good)
    (root / "train" / "dog" / "2.png").write_bytes(good)
    with pytest.raises(DataError, match=r"7 of 13 image files cannot be used: .*\(8, 8\) pixels, not 32×32.*and 2 more"):
        load_dataset(root)
    assert main(["train", "--config", "baseline", "--data-dir", str(root), "--runs-dir", str(tmp_path / "runs")]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("kdnb: error: 7 of") and "Traceback" not in err_text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.json"))


def test_a_damaged_decode_cache_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path / "cache"))
    _write_image_folder(tmp_path / "imgs")
    ds = load_dataset(tmp_path / "imgs")
    (cache,) = (tmp_path / "cache").glob("imagefolder-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="damaged decode cache"):
        again = load_dataset(tmp_path / "imgs")
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_x, ds.test_x)


def test_a_damaged_batch_file_names_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(b"\x80\x04truncated")
    with pytest.raises(DataError, match=r"data_batch_1 is damaged.*download CIFAR-10 again"):
        load_dataset(tmp_path)


REAL = os.environ.get("KDNB_DATA_DIR")


@pytest.mark.skipif(not REAL or REAL == "synthetic" or not Path(REAL).is_dir(), reason="KDNB_DATA_DIR not set to real CIFAR-10")
def test_real_cifar10_directory():
    ds = load_dataset(REAL)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.all(ds.train_y.bincount() == 5000) and torch.all(ds.test_y.bincount() == 1000)
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    mean = ds.train_x[::10].float().mean((0, 2, 3)) / 255  # every class (the files are sorted by class)
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.02)


def test_threaded_jpeg_decode_equals_the_serial_decode(tmp_path):
    """The image-folder loader decodes on a thread pool (in chunks): the same tensors, in the
    same order, as decoding file after file on one thread."""
    from torchvision.io import ImageReadMode, decode_image, read_file, write_jpeg

    from kdnb.engine.data import _decode_files

    gen = torch.Generator().manual_seed(0)
    files = []
    for i in range(600):  # more than one chunk of the pool's map
        path = tmp_path / f"{i % 3}" / f"{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        write_jpeg(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen), str(path), quality=90)
        files.append((path, i % 3))
    x, y = _decode_files(files)
    serial = torch.stack([decode_image(read_file(str(f)), mode=ImageReadMode.RGB) for f, _ in files])
    assert x.dtype == torch.uint8 and torch.equal(x, serial)
    assert y.tolist() == [lab for _, lab in files]
