"""The notebook series: structure rules (fast, no kernel) and nbval in the smoke profile.

The notebooks are the source, each paired by jupytext with a percent script in ``notebooks/py/``.
nbval runs each committed notebook in its own ``pytest --nbval-lax`` subprocess, unmodified except
for what a user types into its ``parameters`` cell (profile ``smoke``, the session's runs directory
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


def _prepare(name: str, runs_dir: Path, dest: Path) -> Path:
    """The committed notebook, unmodified except for what a user types into its parameters cell
    (profile ``smoke``, the test's runs folder relative to ``notebooks/``), saved in ``notebooks/``
    itself so that its kernel starts there, as JupyterLab's does."""
    nb = _read(name)
    assert not any(INJECTED in c.metadata.get("tags", []) for c in nb.cells), "a stale injected-parameters cell"
    (cell,) = _parameters_cells(nb)
    cell.source = _as_a_user_would(cell.source, {"profile": "smoke", "runs_dir": os.path.relpath(runs_dir, NB_DIR)})
    out = NB_DIR / f".test-{dest.name}-{name}.ipynb"
    nbformat.write(nb, out)
    return out


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--sanitize-with", str(SANITIZE), "-p", "no:cacheprovider",
         "-q", "--nbval-cell-timeout", "600", "-o", "addopts=", str(path)],
        cwd=path.parent, capture_output=True, text=True,
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_nbval(name, smoke_pipeline, tmp_path):
    """Every committed notebook runs as it is in JupyterLab after the smoke pipeline (only its
    parameters cell edited), and its checked cells reproduce their stored outputs."""
    runs = smoke_pipeline.runs_dir / "smoke"
    finished = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    path = _prepare(name, smoke_pipeline.runs_dir, tmp_path)
    try:
        result = _nbval(path)
    finally:
        path.unlink()
    assert result.returncode == 0, f"nbval failed for {name}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    # it read the pipeline's runs: nothing retrained there, nothing written beside the notebooks
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")} == finished
    assert not (NB_DIR / "runs").exists()


def test_nbval_catches_a_changed_number(smoke_pipeline, tmp_path):
    """A checked output that no longer matches fails: the check cells really are compared."""
    path = _prepare("03_kd", smoke_pipeline.runs_dir, tmp_path)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(CHECK)
                and "0.9" in c.outputs[0].text)  # the objective on a fixed input: KD weight 0.9
    cell.outputs[0].text = cell.outputs[0].text.replace("0.9", "0.8")
    nbformat.write(nb, path)
    try:
        result = _nbval(path)
    finally:
        path.unlink()
    assert result.returncode != 0
    assert "0.8" in result.stdout
