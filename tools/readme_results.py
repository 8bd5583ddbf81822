#!/usr/bin/env python
"""Copy the committed result tables into README.md, between marker comments.

The README quotes ``figures/results_table.md`` (written by ``08_results``) and
``figures/ablation_table.md`` (written by ``09_mask_ablation``) verbatim, so its numbers are never
typed by hand; ``tests/test_readme.py`` fails when the README and the files disagree.

    python tools/readme_results.py          # rewrite the quoted blocks
    python tools/readme_results.py --check  # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = {"results": ROOT / "figures" / "results_table.md", "ablation": ROOT / "figures" / "ablation_table.md"}


def _quoted(path: Path) -> str:
    """The file's body with its headings pushed down two levels (it sits under a README section)."""
    lines = []
    for line in path.read_text().strip("\n").splitlines():
        lines.append("###" + line if line.startswith("#") else line)
    return "\n".join(lines)


def render(readme: str) -> str:
    for name, path in BLOCKS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in readme:
            continue
        body = _quoted(path) if path.is_file() else f"(`{path.relative_to(ROOT)}` has not been written yet)"
        readme = re.sub(re.escape(start) + r".*?" + re.escape(end),
                        lambda _, start=start, body=body, end=end: f"{start}\n{body}\n{end}", readme, flags=re.S)
    return readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md quotes stale result tables: run python tools/readme_results.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
