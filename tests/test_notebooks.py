"""The notebook series: structure rules (fast, no kernel) and nbval in the smoke profile.

The notebooks are the source, each paired by jupytext with a percent script in ``notebooks/py/``.
nbval runs every committed notebook in one ``pytest --nbval-lax`` subprocess (each notebook in its
own kernel), unmodified except for what a user types into its ``parameters`` cell (profile ``smoke``, the session's runs directory
from ``tests/conftest.py::smoke_pipeline``), from ``notebooks/`` as JupyterLab would. Every cell must
run without error and the cells marked ``# NBVAL_CHECK_OUTPUT`` must reproduce their stored output
(``notebooks/nbval_sanitize.cfg`` masks paths and timings)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jupytext
import nbformat
import papermill
import pytest

from kdnb.engine.config import PRESETS
from kdnb.report.series import NOTEBOOKS, STUDENT_NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
SANITIZE = NB_DIR / "nbval_sanitize.cfg"
CHECK = "# NBVAL_CHECK_OUTPUT"
INJECTED = "injected-parameters"  # papermill's tag for the cell holding a run's parameter values
# Statements that would mean logic lives in a notebook instead of in kdnb.
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.Lambda,
             ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_cells(nb):
    return [c for c in _code(nb) if "parameters" in c.metadata.get("tags", [])]


def test_series_is_complete():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_structure(name):
    nb = _read(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = nb.cells[0]
    assert first.cell_type == "markdown", "a notebook opens with markdown"
    text = first.source
    assert "**Reads**" in text and "**Writes**" in text, "the intro says what the notebook reads and writes"
    assert "$" in text, "the intro states the loss or method in LaTeX"
    assert len(_parameters_cells(nb)) == 1, "exactly one cell tagged `parameters`"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_holds_literals_only(name):
    """Papermill injects values after the cell, so anything derived in it would go stale."""
    (cell,) = _parameters_cells(_read(name))
    tree = ast.parse(cell.source)
    names = []
    for stmt in tree.body:
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), f"only assignments: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # raises on anything but a literal
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
        names.append(target.id)
    assert {"profile", "runs_dir", "data_dir", "figures_dir"} <= set(names)
    # `papermill --help-notebook` must list every parameter with its default
    inferred = papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    assert list(inferred) == names
    assert all(inferred[n]["default"] for n in names)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_hold_no_logic(name):
    for cell in _code(_read(name)):
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, FORBIDDEN), (
                f"{name}: `{type(node).__name__}` in a cell — move it into kdnb:\n{cell.source}")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_checked_ones_or_a_named_reference_run(name):
    nb = _read(name)
    origin = nb.metadata.get("kdnb", {}).get("outputs_from")
    for cell in _code(nb):
        if cell.source.startswith(CHECK):
            assert cell.outputs, f"{name}: checked cell has no stored output (run tools/notebook_outputs.py --checked)"
            assert all(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs)
        elif cell.outputs:
            assert origin, f"{name}: outputs outside checked cells must come from a reference run (--from-run)"
            for o in cell.outputs:
                assert not (o.output_type == "stream" and o.name == "stderr"), f"{name}: stderr committed"
                assert "application/vnd.jupyter.widget-view+json" not in o.get("data", {}), f"{name}: widget"
                text = str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                assert str(ROOT.parent) + "/" not in text, f"{name}: absolute path in a committed output"


def test_outputs_from_a_run_go_only_into_the_notebooks_named(tmp_path, monkeypatch):
    """``tools/notebook_outputs.py --from-run DIR --only 07`` refreshes 07 from DIR's executed copy
    and leaves every other notebook as committed, even with an executed copy in DIR (a 09 still training)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebook_outputs", ROOT / "tools" / "notebook_outputs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    nb_dir, run_dir = tmp_path / "notebooks", tmp_path / "run"
    nb_dir.mkdir(), run_dir.mkdir()
    for name in NOTEBOOKS:
        nb = _read(name)
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
        cell = next(c for c in _code(nb) if not c.source.startswith(CHECK))
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"from the run: {name}\n")]
        nbformat.write(nb, run_dir / f"{name}.ipynb")
    monkeypatch.setattr(tool, "NB_DIR", nb_dir)
    assert tool.main(["--from-run", str(run_dir), "--only", "07", "--describe", "a test run"]) == 0
    for name in NOTEBOOKS:
        text = (nb_dir / f"{name}.ipynb").read_text()
        assert ("from the run: " in text) == name.startswith("07"), name
        assert ("a test run" in text) == name.startswith("07"), name


def _cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_paired_script_matches_notebook(name):
    """Each notebook is paired with a percent script (jupytext) so source diffs stay reviewable; an
    edit made to one side only (JupyterLab without jupytext, an editor on the script) fails here."""
    script = jupytext.read(NB_DIR / "py" / f"{name}.py")
    assert _cells(script) == _cells(_read(name)), (
        f"notebooks/{name}.ipynb and notebooks/py/{name}.py differ: run `jupytext --sync notebooks/{name}.ipynb` "
        "(it keeps the newer side)")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_stale_injected_parameters(name):
    """A papermill ``injected-parameters`` cell in a committed notebook would undo a JupyterLab user's
    edits of the parameters cell one cell later and point at the reference run's paths."""
    assert not any(INJECTED in c.metadata.get("tags", []) for c in _read(name).cells)


def test_student_notebooks_share_one_layout():
    """The five student notebooks are the same notebook for different configurations: their code
    differs only in the configuration's name and the figure's file name, so an edit to one must
    be made to all five."""
    def normalized(name: str, config: str) -> list[str]:
        return [c.source.replace(f'"{config}"', '"<config>"').replace(name, "<notebook>") for c in _code(_read(name))]

    layouts = {name: normalized(name, config) for name, config in STUDENT_NOTEBOOKS.items()}
    first = next(iter(layouts))
    for name, layout in layouts.items():
        assert layout == layouts[first], f"{name}'s code cells differ from {first}'s beyond the configuration"


_TERMS = {"w_ce": r"\mathrm{CE}", "w_kd": r"T^2", "w_fa": r"\mathcal{L}_{FA}", "w_at": r"\mathcal{L}_{AT}"}


@pytest.mark.parametrize(("name", "config"), STUDENT_NOTEBOOKS.items())
def test_student_objective_quotes_the_configured_weights(name, config):
    """The objective written in a student notebook's introduction has the weights of
    ``kdnb.engine.config.PRESETS`` (an omitted weight is 1, an omitted term 0)."""
    formula = re.search(r"\$\$\\mathcal\{L\} = (.*?)\$\$", _read(name).cells[0].source).group(1)
    quoted = {}
    for term in formula.split(" + "):
        key = next(k for k, tex in _TERMS.items() if tex in term)
        weight = re.match(r"(\d*\.?\d+)\\,", term)
        quoted[key] = float(weight.group(1)) if weight else 1.0
    assert quoted == {k: v for k, v in PRESETS[config].items() if k in _TERMS and v > 0}


# ---------------------------------------------------------------- nbval


def _as_a_user_would(source: str, values: dict[str, str]) -> str:
    """The parameters cell with some values retyped (types and comments kept), as in JupyterLab."""
    for name, value in values.items():
        source, n = re.subn(rf"^({name}\s*(?::[^=]*)?=\s*)[^#\n]*?(\s*(?:#.*)?)$", rf"\g<1>{value!r}\g<2>",
                            source, flags=re.M)
        assert n == 1, f"no `{name} = …` line in the parameters cell"
    return source


def _prepare(name: str, runs_dir: Path, dest: Path, tag: str = "") -> Path:
    """The committed notebook, unmodified except for what a user types into its parameters cell
    (profile ``smoke``, the test's runs folder relative to ``notebooks/``), saved in ``notebooks/``
    itself so that its kernel starts there, as JupyterLab's does."""
    nb = _read(name)
    assert not any(INJECTED in c.metadata.get("tags", []) for c in nb.cells), "a stale injected-parameters cell"
    (cell,) = _parameters_cells(nb)
    cell.source = _as_a_user_would(cell.source, {"profile": "smoke", "runs_dir": os.path.relpath(runs_dir, NB_DIR)})
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # another worker's files are never this one's
    out = NB_DIR / f".test-{worker}-{dest.name}-{name}{tag}.ipynb"
    nbformat.write(nb, out)
    return out


def _with_a_changed_number(path: Path) -> None:
    """Change one checked output of 03 (the objective on a fixed input: KD weight 0.9 → 0.8)."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(CHECK)
                and "0.9" in c.outputs[0].text)
    cell.outputs[0].text = cell.outputs[0].text.replace("0.9", "0.8")
    nbformat.write(nb, path)


def _nbval(paths: list[Path], report: Path) -> subprocess.CompletedProcess:
    """nbval on ``paths`` in one pytest process (one pytest start-up; a kernel per notebook), its
    outcome per cell in the JUnit file ``report``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--sanitize-with", str(SANITIZE), "-p", "no:cacheprovider",
         "-q", "--nbval-cell-timeout", "600", "-o", "addopts=", "--junitxml", str(report), *map(str, paths)],
        cwd=NB_DIR, capture_output=True, text=True,
    )


def _failures(report: Path, names: list[str]) -> dict[str, list[str]]:
    """Notebook file name (of ``names``) → the failure texts of its cells (empty: every cell passed;
    absent: no cell of it ran)."""
    import xml.etree.ElementTree as ET

    out: dict[str, list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        # JUnit's classname is the notebook's path with "/" as ".": notebooks..test-…-00_setup_and_data.ipynb
        name = next((n for n in names if case.get("classname", "").endswith(n)), None)
        if name is not None:
            texts = out.setdefault(name, [])
            for bad in (*case.iter("failure"), *case.iter("error")):
                texts.append(f"{case.get('name')}: {bad.get('message', '')}\n{bad.text or ''}")
    return out


@pytest.fixture(scope="module")
def nbval_series(smoke_pipeline, tmp_path_factory):
    """Every committed notebook (and 03 with one checked number changed) under nbval after the smoke
    pipeline; what the runs folder held before and after."""
    runs = smoke_pipeline.runs_dir / "smoke"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    dest = tmp_path_factory.mktemp("nbval")
    paths = {name: _prepare(name, smoke_pipeline.runs_dir, dest) for name in NOTEBOOKS}
    paths["changed"] = _prepare("03_kd", smoke_pipeline.runs_dir, dest, tag="-changed")
    _with_a_changed_number(paths["changed"])
    try:
        result = _nbval(list(paths.values()), dest / "nbval.xml")
        failures = _failures(dest / "nbval.xml", [p.name for p in paths.values()])
    finally:
        for path in paths.values():
            path.unlink()
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    return SimpleNamespace(failures={k: failures.get(p.name) for k, p in paths.items()}, result=result,
                           retrained=before != after, beside=(NB_DIR / "runs").exists())


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_nbval(name, nbval_series):
    """Every committed notebook runs as it is in JupyterLab after the smoke pipeline (only its
    parameters cell edited), and its checked cells reproduce their stored outputs."""
    failures = nbval_series.failures[name]
    assert failures is not None, f"nbval ran no cell of {name}:\n{nbval_series.result.stdout[-3000:]}"
    assert failures == [], f"nbval failed for {name}:\n" + "\n".join(failures)[-6000:]
    # it read the pipeline's runs: nothing retrained there, nothing written beside the notebooks
    assert not nbval_series.retrained and not nbval_series.beside


def test_nbval_catches_a_changed_number(nbval_series):
    """A checked output that no longer matches fails: the check cells really are compared."""
    failures = nbval_series.failures["changed"]
    assert failures and any("0.8" in text for text in failures)
