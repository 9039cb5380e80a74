"""One version, read from the installed package: pyproject's, `leap --version`'s and the changelog's."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from app import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_version_is_pyprojects_as_installed():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    # A stale install (pyproject bumped, `make venv` not rerun) fails here rather than misreport.
    assert __version__ == version("leap") == declared


def test_leap_version_prints_it():
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "--version"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"leap {__version__}\n"


def test_changelog_has_a_section_for_the_version():
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), __version__
