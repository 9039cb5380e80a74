"""User-facing text speaks about the product: no tracked file narrates the project's development
(numbered issues, sessions or rounds of work, commit hashes, "for the record" notes). What the API says
(init notes built from the boosters' notes) is checked where the docs' examples run a real service."""

from __future__ import annotations

import subprocess
from pathlib import Path

from history import history_mentions

REPO_ROOT = Path(__file__).resolve().parents[1]
# The patterns' own files: one defines them, this one shows what they catch.
_PATTERN_FILES = {"tests/history.py", "tests/test_no_history.py"}


def tracked_text_files() -> list[str]:
    """Every file git tracks that reads as text (binary files such as weights and images skipped)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    names = [name for name in listed.decode().split("\0") if name and name not in _PATTERN_FILES]
    texts = []
    for name in names:
        path = REPO_ROOT / name
        if not path.is_file() or b"\0" in path.read_bytes()[:8192]:
            continue
        texts.append(name)
    return texts


def test_no_tracked_file_mentions_development_history():
    found = []
    for name in tracked_text_files():
        text = (REPO_ROOT / name).read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{name}:{number}: {kind}: {match!r}" for kind, match in history_mentions(line)]
    assert not found, "development history in user-facing text:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    # A check that cannot fail proves nothing: each kind of mention, and the text it must leave alone.
    caught = [
        "as issue 11 found",
        "session 9 added two things",
        "issue 15's first round",
        "shipped before, commit da273bd",
        "(da273bd)",
        "kept for the record",
        "the previous booster's start",
        "runs/h11-targets-n1",
    ]
    for text in caught:
        assert history_mentions(text), text
    left_alone = [
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d703c3a4e6a8b",
        "token <leap-1a2b3c4d>",
        "id 3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "colour #1a2b3c4d",
        "in one round trip",
        "words that round-trip to one token",
        '"base_fingerprint": "56e52e617b5cbc03"',
        "queued #3",
        "requires h11==0.16.0",
        "3 rounds of 3 concurrent submissions",
    ]
    for text in left_alone:
        assert not history_mentions(text), text
