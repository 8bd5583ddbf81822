"""``python -m kdnb export``: the exported file gives the trained network's logits on [0, 1] images
(normalisation inside), for any batch size, in onnxruntime and in TorchScript; a folder without a
finished run, or a file in the way, is refused with one line before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdnb.engine import export as export_mod
from kdnb.engine.config import make_config
from kdnb.engine.data import make_synthetic, normalize
from kdnb.engine.export import TOLERANCE, ExportError, export_run
from kdnb.engine.runs import BEST_FILE, CONFIG_FILE, METRICS_FILE
from kdnb.engine.train import load_trained, train

# TorchScript is deprecated upstream (torch 2.14 warns on load) but is still the format asked for
pytestmark = pytest.mark.filterwarnings("ignore:.torch.jit.load. is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory) -> Path:
    """A finished one-epoch smoke baseline (a few seconds)."""
    runs = tmp_path_factory.mktemp("kdnb-export-runs")
    return train(make_config("baseline", "smoke", 0, {"epochs": 1}), runs, progress=False).run_dir


def _images(n: int = 12) -> torch.Tensor:
    """uint8 images the smoke runs know (the synthetic set's test images) and random ones: (n, 3, 32, 32)."""
    data = make_synthetic(n_train=10, n_test=n // 2)
    noise = torch.randint(0, 256, (n - n // 2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return torch.cat([data.test_x, noise])


def _reference(run_dir: Path, images: torch.Tensor) -> np.ndarray:
    """The trained network's logits as kdnb computes them (uint8 -> kdnb's normalisation -> network)."""
    with torch.no_grad():
        return load_trained(run_dir)(normalize(images)).numpy()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdnb", "export", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": (images.float() / 255).numpy()})[0]


def _torchscript_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(images.float() / 255).numpy()


@pytest.fixture(scope="module")
def onnx_file(baseline_run, cli_env) -> Path:
    """The baseline exported through the command line, to its default place."""
    pytest.importorskip("onnxscript")
    out = _cli([baseline_run, "--format", "onnx"], cli_env)
    assert out.returncode == 0, out.stderr
    path = baseline_run / "student.onnx"
    assert f"wrote {path} (onnx)" in out.stdout
    return path


def test_onnx_gives_the_trained_logits(baseline_run, onnx_file):
    """A batch of 12 (the export traced 2: the batch axis is free), [0, 1] floats in, logits out."""
    images = _images(12)
    got, ref = _onnx_logits(onnx_file, images), _reference(baseline_run, images)
    assert got.shape == ref.shape == (12, 10)
    delta = float(np.abs(got - ref).max())
    print(f"onnx max |delta| {delta:.3g}")
    assert delta <= TOLERANCE


def test_onnx_file_describes_itself(onnx_file, baseline_run):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("images", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == [f"class{c}" for c in range(10)]  # the smoke runs' synthetic classes
    assert meta["config"] == "baseline" and "[0, 1]" in meta["input"]
    # the network alone: no more weights than the student's parameters and buffers (+ mean and std)
    net = load_trained(baseline_run)
    stored = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert stored <= sum(t.numel() for t in (*net.parameters(), *net.buffers())) + 6


def test_torchscript_gives_the_trained_logits(baseline_run, tmp_path):
    path = export_run(baseline_run, "torchscript", out=tmp_path / "student.pt")
    images = _images(12)
    delta = float(np.abs(_torchscript_logits(path, images) - _reference(baseline_run, images)).max())
    print(f"torchscript max |delta| {delta:.3g}")
    assert delta <= TOLERANCE
    extra = {"kdnb.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["kdnb.json"])
    assert meta["config"] == "baseline" and meta["classes"] == [f"class{c}" for c in range(10)]


def test_the_teacher_exports_too(smoke_runs, tmp_path):
    """ResNet-50 with CBAM (the session's smoke teacher): both formats give its logits."""
    pytest.importorskip("onnxscript")
    run_dir = smoke_runs / "smoke" / "teacher" / "seed0"
    images = _images(8)
    ref = _reference(run_dir, images)
    onnx_path = export_run(run_dir, "onnx", out=tmp_path / "teacher.onnx")
    ts_path = export_run(run_dir, "torchscript", out=tmp_path / "teacher.pt")
    assert float(np.abs(_onnx_logits(onnx_path, images) - ref).max()) <= TOLERANCE
    assert float(np.abs(_torchscript_logits(ts_path, images) - ref).max()) <= TOLERANCE
    assert not (run_dir / "student.onnx").exists()  # --out was honoured


def _unfinished(baseline_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "smoke" / "baseline" / "seed0"
    d.mkdir(parents=True)
    (d / CONFIG_FILE).write_text((baseline_run / CONFIG_FILE).read_text())
    return d


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a folder: give the folder of a finished run (runs/<profile>/<config>/seed<k>"),
    ("empty", "is not a kdnb run folder (no config.json): give the folder of a finished run"),
    ("unfinished", f"holds no finished run (no {METRICS_FILE} or {BEST_FILE}): finish it with `python -m kdnb train "
                   "--config baseline --profile smoke --seed 0 --runs-dir"),
])
def test_a_folder_without_a_finished_run_is_refused_in_one_line(case, expected, baseline_run, tmp_path, cli_env):
    folder = {"missing": lambda: tmp_path / "nowhere", "empty": lambda: tmp_path,
              "unfinished": lambda: _unfinished(baseline_run, tmp_path)}[case]()
    out = _cli([folder, "--format", "onnx"], cli_env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"kdnb: error: {folder} "), out.stderr
    assert expected in out.stderr
    assert not list(tmp_path.rglob("student.*"))


def test_an_existing_file_is_replaced_only_with_force(baseline_run, tmp_path, cli_env):
    target = tmp_path / "model.pt"
    target.write_bytes(b"someone's file")
    out = _cli([baseline_run, "--format", "torchscript", "--out", target], cli_env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"kdnb: error: {target} already exists: pass --force to replace it, or --out another file" in out.stderr
    assert target.read_bytes() == b"someone's file"
    out = _cli([baseline_run, "--format", "torchscript", "--out", target, "--force"], cli_env)
    assert out.returncode == 0, out.stderr
    assert torch.jit.load(str(target)) is not None


def test_a_missing_package_is_named_before_any_work(baseline_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "find_spec", lambda name: None if name == "onnxscript" else object())
    monkeypatch.setattr(export_mod, "load_trained", lambda *a, **k: pytest.fail("loaded the run before the check"))
    with pytest.raises(ExportError, match=r"the onnx export needs onnxscript, not installed here: "
                                          r"pip install -e '\.\[export\]'"):
        export_run(baseline_run, "onnx", out=tmp_path / "x.onnx")
