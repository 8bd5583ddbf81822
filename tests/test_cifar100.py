"""CIFAR-100 (kdnb/engine/datasets/cifar100.py) end to end on small synthetic sets written in the real
on-disk formats (the `cifar-100-python` pickles and an image folder); nothing downloads."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdnb.engine.data import DataError, load_dataset
from kdnb.engine.datasets import DATASETS

CLASSES = DATASETS["cifar100"].classes


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """``n`` images per class: each class a colour patch at its own place on noise (learnable)."""
    labels = [c for c in range(100) for _ in range(n)]
    data = rng.integers(60, 120, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = (c // 10) * 3, (c % 10) * 3
        data[i, :, r:r + 4, col:col + 4] = np.array([(c * 37) % 256, (c * 91) % 256, 255 - c])[:, None, None]
    return data, labels


def write_cifar100_python(root, train_per_class: int = 10, test_per_class: int = 2):
    """The release's layout: cifar-100-python/{train,test,meta}, dicts pickled with str keys,
    ``data`` (N, 3072) uint8 in CHW order, ``fine_labels`` and ``coarse_labels``."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train_per_class), ("test", test_per_class)):
        data, labels = _images(n, rng)
        entry = {"filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": f"{name} batch",
                 "fine_labels": labels, "coarse_labels": [c // 5 for c in labels],
                 "data": data.reshape(len(labels), -1)}
        (d / name).write_bytes(pickle.dumps(entry, protocol=2))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": list(CLASSES),
                                           "coarse_label_names": [f"super{i}" for i in range(20)]}, protocol=2))
    return d


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    write_cifar100_python(root)
    return root


def test_reads_the_pickle_release_from_its_folder_or_the_parent(cifar100_dir):
    for path in (cifar100_dir, cifar100_dir / "cifar-100-python"):
        ds = load_dataset(path, dataset="cifar100")
        assert ds.num_classes == 100 and ds.classes == CLASSES and ds.dataset == "cifar100"
        assert ds.train_x.shape == (1000, 3, 32, 32) and ds.test_x.shape == (200, 3, 32, 32)
        assert torch.equal(torch.bincount(ds.train_y, minlength=100), torch.full((100,), 10))
        assert ds.mean == DATASETS["cifar100"].mean != DATASETS["cifar10"].mean
    with pytest.raises(DataError, match="is not a CIFAR-10 directory"):  # the CIFAR-10 reader does not take it
        load_dataset(cifar100_dir)


def test_reads_an_image_folder_of_100_classes_and_cifar10_refuses_it(tmp_path):
    from torchvision.io import write_png

    rng = np.random.default_rng(1)
    data, labels = _images(1, rng)
    for split in ("train", "test"):
        for i, c in enumerate(labels):
            (tmp_path / split / CLASSES[c]).mkdir(parents=True, exist_ok=True)
            write_png(torch.from_numpy(data[i]), str(tmp_path / split / CLASSES[c] / f"{i}.png"))
    ds = load_dataset(tmp_path, dataset="cifar100")
    assert ds.classes == CLASSES and torch.equal(ds.train_y, torch.arange(100))
    with pytest.raises(DataError, match="has 100 class folders, CIFAR-10 has 10: choose the matching dataset"):
        load_dataset(tmp_path)


def test_trains_reloads_as_100_classes_and_the_report_handles_100_names(cifar100_dir, tmp_path, cli_env):
    from kdnb.engine.config import make_config
    from kdnb.engine.train import load_trained, train
    from kdnb.report.explorer import MaskExplorer
    from kdnb.report.plots import sample_grid

    common = {"dataset": "cifar100", "data_dir": str(cifar100_dir), "epochs": "1"}
    cmd = [sys.executable, "-m", "kdnb", "train", "--profile", "smoke", "--config", "teacher", "--runs-dir", str(tmp_path),
           "--quiet", *[a for k, v in common.items() for a in ("--set", f"{k}={v}")]]
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    teacher = load_trained(tmp_path / "smoke" / "teacher" / "seed0")
    assert teacher.fc.out_features == 100
    result = train(make_config("kd", "smoke", 0, common), tmp_path, progress=False)
    assert result.config.dataset == "cifar100" and 0 <= result.metrics["test_acc"] <= 1
    assert load_trained(result.run_dir).fc.out_features == 100

    data = load_dataset(cifar100_dir, dataset="cifar100")
    explorer = MaskExplorer(tmp_path, "smoke", 0, data, configs=["kd"], overrides=common)
    view = explorer.view(label=57, image=1)
    assert view.label == CLASSES[57] and view.predictions["KD"][0] in CLASSES
    fig = sample_grid(data.train_x, data.train_y, data.classes)
    rows = [ax.get_ylabel() for ax in fig.axes[::8]]
    assert len(rows) == 10 and rows[0] == CLASSES[0] and rows[-1] == CLASSES[-1]
    assert "10 of 100 classes" in fig._suptitle.get_text()
