"""The package's dependencies point one way: entry points -> report -> evaluation -> engine -> method;
and among the scale-out modules (pipeline, jobs, executors, steps) there is no import cycle.

Every ``import`` of a kdnb module (top-level or inside a function) is read from the source with
``ast``, so an import hidden in a function to dodge a cycle counts too."""
import ast
from pathlib import Path

import pytest

import kdnb

PACKAGE = Path(kdnb.__file__).parent
# lower number = lower layer; a module may import its own layer and the layers below it
LAYERS = {"method": 0, "engine": 1, "evaluation": 2, "report": 3}
ENTRY = 4  # cli, pipeline, steps, jobs, bench, device_train, executors, __main__: may import anything
# The modules that plan, schedule and execute the series: each a node of the import graph checked
# for cycles (a package counts as one node: kdnb.executors.local is kdnb.executors).
SCALE_OUT = ("kdnb.pipeline", "kdnb.jobs", "kdnb.executors", "kdnb.steps")


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
    entry = {"__init__", "__main__", "cli", "pipeline", "steps", "jobs", "bench", "device_train"}
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


def _node(module: str) -> str | None:
    """The scale-out node a dotted name belongs to (``kdnb.executors.ray.run`` -> ``kdnb.executors``)."""
    return next((n for n in SCALE_OUT if module == n or module.startswith(n + ".")), None)


def _cycle(root: Path) -> list[str]:
    """One import cycle among the SCALE_OUT modules of the package at ``root`` (``[]``: none)."""
    edges: dict[str, set[str]] = {n: set() for n in SCALE_OUT}
    for path in sorted(root.rglob("*.py")):
        here = _node(_module_name(path, root))
        if here is None:
            continue
        for _, target in _imports(path, root):
            there = _node(target)
            if there is not None and there != here:
                edges[here].add(there)

    def visit(node: str, trail: list[str]) -> list[str]:
        if node in trail:
            return trail[trail.index(node):] + [node]
        return next((c for nxt in sorted(edges[node]) if (c := visit(nxt, trail + [node]))), [])

    return next((c for n in SCALE_OUT if (c := visit(n, []))), [])


def test_pipeline_jobs_and_executors_import_no_cycle():
    """The step model lives in kdnb.steps: the pipeline imports jobs and executors, they import
    the steps, and nothing imports the pipeline back (jobs once did, for Step and execute_step)."""
    assert _cycle(PACKAGE) == []


def test_the_check_sees_an_import_cycle(tmp_path):
    """The checker itself: jobs importing the pipeline (as it once did) while the pipeline imports
    the executors, which import jobs, is a cycle, also when one import is inside a function."""
    pkg = tmp_path / "kdnb"
    (pkg / "executors").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "executors" / "__init__.py").write_text("from ..jobs import Job\n")
    (pkg / "jobs.py").write_text("from .pipeline import Step\n")
    (pkg / "pipeline.py").write_text("def run():\n    from .executors import run_jobs\n")
    assert _cycle(pkg) == ["kdnb.pipeline", "kdnb.executors", "kdnb.jobs", "kdnb.pipeline"]
