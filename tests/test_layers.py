"""The package's dependencies point one way: entry points -> report -> evaluation -> engine -> method.

Every ``import`` of a kdnb module (top-level or inside a function) is read from the source with
``ast``, so an import hidden in a function to dodge a cycle counts too."""
import ast
from pathlib import Path

import pytest

import kdnb

PACKAGE = Path(kdnb.__file__).parent
# lower number = lower layer; a module may import its own layer and the layers below it
LAYERS = {"method": 0, "engine": 1, "evaluation": 2, "report": 3}
ENTRY = 4  # cli, pipeline, jobs, bench, executors, __main__: may import anything


def _layer(module: str) -> int:
    """The layer of a dotted kdnb module name (``kdnb.engine.train`` -> 1)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("__init__", "__version__"):
        return 0  # the package root itself, which holds only __version__
    return LAYERS.get(parts[1], ENTRY)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute kdnb module) of every kdnb import in ``path`` (a file of the package at ``root``)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, t) for t in targets if t == "kdnb" or t.startswith("kdnb.")]
    return out


def _violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        own = _layer(_module_name(path, root))
        for line, target in _imports(path, root):
            if _layer(target) > own:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {target}")
    return bad


def test_dependencies_point_one_way():
    assert _violations(PACKAGE) == []


def test_every_module_lives_in_a_layer_or_is_an_entry_point():
    entry = {"__init__", "__main__", "cli", "pipeline", "jobs", "bench"}
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in entry]
    assert loose == [], "put new modules in method/, engine/, evaluation/ or report/"


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a method module importing the engine inside a function is caught."""
    pkg = tmp_path / "kdnb"
    (pkg / "method").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "method" / "__init__.py").write_text("")
    (pkg / "method" / "losses.py").write_text("from . import models\n\ndef f():\n    from ..engine.train import train\n")
    assert _violations(pkg) == ["kdnb/method/losses.py:4 imports kdnb.engine.train.train"]


@pytest.mark.parametrize("source, expected", [("from ..report import plots", "kdnb.report.plots"),
                                              ("from .data import x", "kdnb.engine.data.x"),
                                              ("import kdnb.method.models", "kdnb.method.models"),
                                              ("from kdnb import bench", "kdnb.bench")])
def test_imports_resolve_to_absolute_names(tmp_path, source, expected):
    pkg = tmp_path / "kdnb" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "train.py").write_text(source + "\n")
    assert [t for _, t in _imports(pkg / "train.py", tmp_path / "kdnb")] == [expected]
