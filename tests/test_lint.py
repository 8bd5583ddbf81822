"""The code passes ruff with the project's configuration (pyproject.toml: pycodestyle, pyflakes,
bugbear; notebook scripts with their own exceptions), so CI lints what it tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "kdnb", "tests", "tools", "notebooks/py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert "No module named ruff" not in done.stderr, "ruff is missing: pip install -r requirements.txt"
    assert done.returncode == 0, done.stdout + done.stderr
