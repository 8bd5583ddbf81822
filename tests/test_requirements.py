"""requirements.txt (pip) and environment.yml (conda) must install the same packages."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from the PyPI ones
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-cpu": "torch", "matplotlib-base": "matplotlib"}
CONDA_ONLY = {"python", "pip"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_specs(lines) -> dict[str, str]:
    """{name: specifier} of requirement lines, skipping comments, options and local installs."""
    out = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        out[_norm(req.name)] = str(req.specifier)
    return out


def _conda_spec(dep: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep.strip())
    name, spec = m.group(1), m.group(2).replace(" ", "")
    return _norm(CONDA_TO_PYPI.get(name, name)), spec


def _requirements() -> dict[str, str]:
    return _pip_specs((ROOT / "requirements.txt").read_text().splitlines())


def _environment() -> tuple[dict, dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    specs = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            specs.update(_pip_specs(dep.get("pip", [])))
            continue
        name, spec = _conda_spec(dep)
        if name not in CONDA_ONLY:
            specs[name] = spec
    return env, specs


def test_same_packages():
    req = _requirements()
    _, env = _environment()
    assert sorted(req) == sorted(env), (
        f"only in requirements.txt: {sorted(set(req) - set(env))}; only in environment.yml: {sorted(set(env) - set(req))}")


def test_same_version_bounds():
    req = _requirements()
    _, env = _environment()
    differ = {n: (req[n], env[n]) for n in req if n in env and sorted(req[n].split(",")) != sorted(env[n].split(","))}
    assert not differ, f"version bounds differ (requirements.txt, environment.yml): {differ}"


def test_channels_and_torch():
    env, specs = _environment()
    assert env["channels"][0] == "conda-forge"
    assert not any("pytorch" in str(c) for c in env["channels"]), "the pytorch channel is retired: use conda-forge/pip"
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(specs["torch"]).contains("2.14.1"), "torch 2.14.1 must stay installable"
    for needed in ("torch", "torchvision", "jupyterlab", "ipykernel", "ipywidgets", "matplotlib", "seaborn", "pandas",
                   "tqdm", "papermill", "nbval", "pytest"):
        assert needed in specs, f"{needed} missing"


def test_pyproject_declares_what_requirements_install():
    """pip install -e '.[notebooks,test,cluster]' and pip install -r requirements.txt install the
    same packages with the same bounds; the runtime dependencies are the ones kdnb itself imports."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pip_specs(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.update(_pip_specs(extra))
    req = _requirements()
    assert sorted(declared) == sorted(req), (
        f"only in pyproject.toml: {sorted(set(declared) - set(req))}; "
        f"only in requirements.txt: {sorted(set(req) - set(declared))}")
    assert {n: declared[n] for n in declared} == req, "version bounds differ between pyproject.toml and requirements.txt"
    runtime = set(_pip_specs(project["dependencies"]))
    assert {"torch", "torchvision", "numpy", "pandas"} <= runtime
    assert not runtime & {"pytest", "nbval", "ruff", "ray"}, "test and cluster packages belong in extras"
