"""The docs tell the truth about the code: every error code the service, the trainer or the CLI can
produce is on the errors page, and the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where error codes are set: a LeapError/TrainerError class's `code`, a code rendered or stored by
# name, and the CLI's own codes.
_CODE_SITES = (
    re.compile(r'^\s+code = "([a-z_]+)"', re.M),
    re.compile(r'render_error\(\s*\d+,\s*"([a-z_]+)"'),
    re.compile(r'\berror_code\s*=\s*"([a-z_]+)"|"error_code":\s*"([a-z_]+)"'),
    re.compile(r'\bcode\s*=\s*"([a-z_]+)"'),
    re.compile(r'fail\(\s*ExitCode\.\w+,\s*"([a-z_]+)"'),
    re.compile(r'^\s+\d{3}: "([a-z_]+)",$', re.M),  # app/errors.py: framework HTTP errors by status
    re.compile(r'_HTTP_CODES\.get\([^)]*"([a-z_]+)"\)'),  # ... and any other status
)


def error_codes() -> set[str]:
    """Every error code written in app/, workers/ and models/."""
    codes: set[str] = set()
    for folder in ("app", "workers", "models"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in _CODE_SITES:
                for match in pattern.finditer(text):
                    codes.update(group for group in match.groups() if group)
    return codes


def test_every_error_code_is_on_the_errors_page():
    codes = error_codes()
    # The scan finds the codes it is meant to (it would pass vacuously otherwise).
    assert {"validation_error", "invalid_images", "out_of_memory", "worker_lost", "no_api_key", "http_error"} <= codes
    page = (REPO_ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", page, re.M))
    assert codes <= documented, f"not on docs/errors.md: {sorted(codes - documented)}"


def test_readme_is_a_front_door():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, len(lines)
