#!/usr/bin/env python
"""Refresh the outputs stored in the committed notebooks; their sources are never touched.

The notebooks in ``notebooks/`` are the source (edit them in JupyterLab; each is paired with a
percent-format script in ``notebooks/py/`` by jupytext, so diffs stay reviewable). Two kinds of
outputs are committed:

- the cells marked ``# NBVAL_CHECK_OUTPUT``: profile-independent numbers (parameter counts, loss
  values on fixed inputs, the masks of a fixed cam) that nbval compares in CI, so a changed number fails;
- a reference run's outputs (figures, tables), readable on GitHub, from a pipeline's executed
  notebooks, with the run's parameters kept in the notebook metadata rather than in a cell.

    python tools/notebook_outputs.py --checked                 # re-record the check cells (runs the smoke series)
    python tools/notebook_outputs.py --from-run runs/cpu/notebooks --describe "fresh clone of <commit>"
    python tools/notebook_outputs.py --from-run runs/cpu/notebooks --only 07 08 --describe "..."  # just these
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"
INJECTED = "injected-parameters"  # papermill's tag for the cell holding a run's parameter values
WIDGET = "application/vnd.jupyter.widget-view+json"


def committed() -> dict[str, nbformat.NotebookNode]:
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))}


def _executed_copy(run_dir: Path, name: str) -> Path | None:
    """A pipeline's executed copy of ``name``; for the student notebooks the lowest seed's."""
    path = run_dir / f"{name}.ipynb"
    if path.is_file():
        return path
    seeds = sorted(run_dir.glob(f"{name}_seed*.ipynb"), key=lambda p: int(p.stem.rsplit("seed", 1)[1]))
    return seeds[0] if seeds else None


def _relative(text: str, root: str) -> str:
    """No machine's paths in committed outputs: the data folder shows as ``$KDNB_DATA_DIR``, paths
    in this checkout relative to it, anything else beside it as ``<local>/``."""
    data = os.environ.get("KDNB_DATA_DIR")
    if data:
        text = text.replace(str(Path(data).resolve()), "$KDNB_DATA_DIR")
    return text.replace(root + "/", "").replace(str(Path(root).parent) + "/", "<local>/")


def _clean_outputs(outputs: list, root: str) -> list:
    """A reference run's outputs as committed: no progress widgets or stderr (compile warnings,
    progress bars), and paths relative to the repository."""
    kept = []
    for o in outputs:
        if o.get("output_type") == "stream" and o.get("name") == "stderr":
            continue
        data = o.get("data", {})
        if WIDGET in data:
            continue
        o = copy.deepcopy(o)
        if o.get("output_type") == "stream":
            o["text"] = _relative(o["text"], root)
        for mime in ("text/plain", "text/html", "text/markdown"):
            if mime in data:
                text = "".join(data[mime]) if isinstance(data[mime], list) else data[mime]
                o["data"][mime] = _relative(text, root)
        kept.append(o)
    return kept


def _same_cells(nb: nbformat.NotebookNode, ran: nbformat.NotebookNode) -> dict:
    """The executed notebook's code cells by id, where the committed cell has the same source
    (an executed copy of an older version of the notebook contributes only its unchanged cells)."""
    by_id = {c.get("id"): c for c in ran.cells}
    return {c.id: by_id[c.id] for c in nb.cells
            if c.cell_type == "code" and c.id in by_id and by_id[c.id].source == c.source}


def from_run(nbs: dict[str, nbformat.NotebookNode], run_dir: Path, description: str) -> None:
    """Store the outputs of the executed notebooks in ``run_dir`` in the committed notebooks, cell
    by cell id. Check cells keep their recorded outputs: those are compared by nbval in CI."""
    root = str(ROOT)
    for name, nb in nbs.items():
        path = _executed_copy(run_dir, name)
        if path is None:
            print(f"{run_dir}: no executed copy of {name}; its notebook keeps its outputs")
            continue
        ran = nbformat.read(path, as_version=4)
        same = _same_cells(nb, ran)
        for cell in nb.cells:
            if cell.cell_type != "code" or cell.source.startswith(CHECK):
                continue
            src = same.get(cell.id)
            cell.outputs = _clean_outputs(src.get("outputs", []), root) if src is not None else []
            cell.execution_count = src.get("execution_count") if cell.outputs else None
        # the values the outputs came from go into the metadata, not into a cell that would run
        injected = next((c for c in ran.cells if INJECTED in c.metadata.get("tags", [])), None)
        parameters = _relative(injected.source, root).replace(root, ".") if injected is not None else None
        nb.metadata["kdnb"] = {"outputs_from": {"run": description, "executed_copy": path.name,
                                                "parameters": parameters}}


def record_checked(nbs: dict[str, nbformat.NotebookNode]) -> None:
    """Execute the series as committed on the smoke profile and store the check cells' outputs."""
    sys.path.insert(0, str(ROOT))
    from kdnb.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="kdnb-notebooks-") as tmp:
        run_pipeline(profile="smoke", seeds=[0], runs_dir=tmp, verbose=False, ablation=True)
        for name, nb in nbs.items():
            ran = nbformat.read(_executed_copy(Path(tmp) / "smoke" / "notebooks", name), as_version=4)
            same = _same_cells(nb, ran)
            for cell in nb.cells:
                if cell.cell_type == "code" and cell.source.startswith(CHECK):
                    cell.outputs = copy.deepcopy(same[cell.id].get("outputs", []))
                    cell.execution_count = same[cell.id].get("execution_count")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checked", action="store_true", help="re-record check-cell outputs (runs the smoke series)")
    ap.add_argument("--from-run", metavar="DIR", help="store the outputs of the executed notebooks in DIR "
                    "(e.g. runs/cpu/notebooks) in the committed notebooks; check cells keep theirs")
    ap.add_argument("--describe", metavar="TEXT", default="", help="with --from-run: what run it was")
    ap.add_argument("--only", nargs="+", metavar="PREFIX", help="only these notebooks (name prefixes, e.g. 07 08); "
                    "the others keep their outputs (e.g. while the run's 09 is still training)")
    args = ap.parse_args(argv)
    if not (args.checked or args.from_run):
        ap.error("nothing to do: give --checked and/or --from-run DIR")
    nbs = {name: nb for name, nb in committed().items()
           if not args.only or any(name.startswith(prefix) for prefix in args.only)}
    if not nbs:
        ap.error(f"no notebook starts with {', '.join(args.only)}")
    if args.checked:
        record_checked(nbs)
    if args.from_run:
        from_run(nbs, Path(args.from_run).resolve(), args.describe)
    for name, nb in nbs.items():
        nbformat.validate(nb)
        nbformat.write(nb, NB_DIR / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
