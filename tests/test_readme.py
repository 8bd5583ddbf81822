"""The README quotes the committed result tables verbatim (no hand-typed numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quotes_the_result_files():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_results.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_check_catches_a_changed_number(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import readme_results

    table = tmp_path / "results_table.md"
    table.write_text("# t\n\n| a |\n|---|\n| 83.77 |\n")
    monkeypatch.setattr(readme_results, "BLOCKS", {"results": table})
    readme = "x\n<!-- results:start -->\n<!-- results:end -->\ny\n"
    rendered = readme_results.render(readme)
    assert "| 83.77 |" in rendered and "#### t" in rendered
    assert readme_results.render(rendered) == rendered
    assert readme_results.render(rendered.replace("83.77", "83.78")) == rendered
