"""What readers see (the README, docs, notebooks, figure notes) names no internal tracking numbers:
"#29", "issue 30", "Session 9" mean nothing outside the project's tracker, so say what they refer to.

Colour codes ('#0072B2', '#333'), markdown headings, HTML entities, URL fragments and counters such as
"seed #2" are not references and are not flagged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# `#<number>` standing alone: not inside a word, an entity (&#123;), a path or URL, or a quoted literal
HASH_REF = re.compile(r"(?<![\w&/'\"#])#(\d{1,5})(?![\w-])")
# "issue 30", "issues #3", "Session 9", "PR 12", "pull request #4", "ticket 7", "task #2"
WORD_REF = re.compile(r"\b(?:issues?|sessions?|tickets?|PRs?|pull requests?)\s*(?:#|no\.\s*)?\d+\b"
                      r"|\btasks?\s*#\d+\b", re.IGNORECASE)
# a `#<number>` after one of these words counts something (seed #2, epoch #5), it is no reference
COUNTERS = ("seed", "seeds", "epoch", "step", "image", "class", "rank", "batch", "layer", "block", "run", "cell")


def tracking_references(text: str) -> list[tuple[int, str]]:
    """(line, matched text) of every internal tracking reference in ``text``."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in HASH_REF.finditer(line):
            before = line[: m.start()].rstrip().rsplit(None, 1)
            if before and before[-1].lower().strip("(") in COUNTERS:
                continue
            found.append((lineno, m.group(0)))
        found += [(lineno, m.group(0)) for m in WORD_REF.finditer(line)]
    return found


def _notebook_text(path: Path) -> str:
    """A notebook's cell sources and text outputs (not its images), one line per source line."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb.get("cells", []):
        parts.append("".join(cell.get("source", "")))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/"):
                    parts.append("".join(value) if isinstance(value, list) else str(value))
    return "\n".join(parts)


def _reader_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "notebooks").glob("*.ipynb")),
             *sorted((ROOT / "notebooks" / "py").glob("*.py")), *sorted((ROOT / "figures").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def test_readers_see_no_tracking_numbers():
    bad = []
    for path in _reader_files():
        text = _notebook_text(path) if path.suffix == ".ipynb" else path.read_text()
        bad += [f"{path.relative_to(ROOT)}:{line}: {hit!r}" for line, hit in tracking_references(text)]
    assert not bad, "internal tracking numbers (say what they refer to instead):\n" + "\n".join(bad)


def test_the_files_checked_include_the_readme_and_notebooks():
    names = {p.relative_to(ROOT).as_posix() for p in _reader_files()}
    assert "README.md" in names and any(n.startswith("notebooks/py/") for n in names)
    assert any(n.endswith(".ipynb") for n in names) and any(n.startswith("figures/") for n in names)
    docs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert docs and docs <= names, "every docs/*.md page is checked"


@pytest.mark.parametrize("text", [
    "fixed in #29", "(#15)", "see issue 30", "as Issue #12 asked", "Session 9 measured", "sessions 3", "PR 4",
    "pull request #17", "ticket 7", "task #2", "the cache (#35): kept", "#34",
])
def test_the_check_catches_references(text):
    assert tracking_references(text), text


@pytest.mark.parametrize("text", [
    "# Results", "## 1. Setup", "#### kdnb results", "color='#0072B2'", 'c="#333"', "colour #0072B2", "seed #2",
    "epoch #5 of 30", "&#8212;", "see [Data](#data)", "https://x.org/a#12", "RQ3", "step 1 of 3",
    "x = 1  # 2 more", "in this session: 21 runs", "issue tracker", "the 3 issues below", "#!/usr/bin/env python",
])
def test_the_check_leaves_other_things_alone(text):
    assert tracking_references(text) == [], text
