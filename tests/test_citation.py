"""LICENSE and CITATION.cff: the licence pyproject.toml declares is the one in LICENSE, and the paper
is cited with its title and authors exactly as its text gives them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import kdnb

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT.parent / "shared" / "paper"  # the paper's text, beside the checkout when it is there


def _citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _paper_reference() -> dict:
    refs = [r for r in _citation().get("references", []) if "OmerBentzi" in r.get("repository-code", "")]
    assert len(refs) == 1, "CITATION.cff must cite the paper once, under references"
    return refs[0]


def test_license_is_mit_and_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the kdnb authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
    project = _pyproject()
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]


def test_citation_cites_kdnb():
    cff = _citation()
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software" and cff["title"].startswith("kdnb")
    assert cff["version"] == kdnb.__version__, "bump CITATION.cff's version with kdnb.__version__"
    assert cff["license"] == _pyproject()["license"]
    assert cff["authors"] and cff["message"]


def test_citation_has_the_fields_cff_requires():
    """The required keys of CFF 1.2.0 (the full schema check needs the schema file, which is not shipped)."""
    cff = _citation()
    assert {"cff-version", "message", "title", "authors"} <= set(cff)
    for ref in cff["references"]:
        assert {"type", "title", "authors"} <= set(ref)
        for person in ref["authors"]:
            assert person.get("family-names") or person.get("name")


def test_paper_is_cited_with_its_title_and_authors():
    ref = _paper_reference()
    names = [f"{a['given-names']} {a['family-names']}" for a in ref["authors"]]
    assert names == ["Omer Ben Simon", "Roei Aviv", "Yuval Loria"]
    assert ref["title"] == "Knowledge Distillation"


def test_the_citation_matches_the_papers_text():
    """Against the paper's own text: each author's name is a line of it (bold marks aside), and the
    title is the one its description quotes and the text uses."""
    if not (PAPER / "paper.txt").is_file():
        pytest.skip(f"the paper's text is not here ({PAPER})")
    text = (PAPER / "paper.txt").read_text()
    lines = {re.sub(r"[*\s]+", " ", line).strip() for line in text.splitlines()}
    ref = _paper_reference()
    for a in ref["authors"]:
        assert f"{a['given-names']} {a['family-names']}" in lines
    assert ref["title"] in text
    assert f'"{ref["title"]}" by Omer Ben Simon, Roei Aviv and Yuval Loria' in (PAPER / "README.md").read_text()
