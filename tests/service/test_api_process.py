"""The API process stays slim: it never imports torch or diffusers."""

from __future__ import annotations

import subprocess
import sys

from .helpers import REPO_ROOT

PROBE = """
import sys
from app.main import create_app
from app.cli import cli
import workers.celery_app
app = create_app()
app.openapi()
heavy = sorted(name for name in ("torch", "diffusers", "transformers", "peft") if name in sys.modules)
print(",".join(heavy))
"""


def test_api_never_imports_torch_or_diffusers(tmp_path):
    env = {"LEAP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
