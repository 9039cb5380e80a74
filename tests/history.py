"""Patterns of development history in user-facing text: numbered issues, sessions and rounds of work,
commit hashes, "for the record" narratives and work folders named after an issue (`h11-...`).

Shared by tests/test_no_history.py (every tracked text file) and the service tests that check what
the API and the CLI say."""

from __future__ import annotations

import re

_ROUND_WORDS = r"(?:first|second|third|fourth|fifth|next|last|previous|earlier|later|this|that|one|two|three|four|five)"
HISTORY_PATTERNS: dict[str, re.Pattern[str]] = {
    "issue number": re.compile(r"\bissues?\s+#?\d+\b|\bissue\s*#\d+\b", re.I),
    "session number": re.compile(r"\bsessions?\s+(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten)\b", re.I),
    "round of work": re.compile(
        rf"\b{_ROUND_WORDS}\s+round\b(?![\s-]trip)|\bround\s+(?:one|two|three|four|five|\d+)\b", re.I
    ),
    "for the record": re.compile(r"\bfor the record\b", re.I),
    "previous booster": re.compile(r"\bprevious booster\b", re.I),
    # 7-40 hex digits with a letter and a digit, standing alone in prose: not part of a longer hex
    # run (sha256 digests), a UUID or a name (`leap-1a2b3c4d`, `leap_live_...`), nor a colour (`#...`).
    "commit hash": re.compile(
        r"(?<![\w#/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w-])"
        r"|\bcommit\s+[0-9a-f]{7,40}\b",
        re.I,
    ),
    "issue work folder": re.compile(r"\bh\d{1,3}-[a-z]"),
}


# Hex that is not a commit: a booster's fingerprint of its base model's embedding rows.
_ALLOWED = re.compile(r'"base_fingerprint": "[0-9a-f]{16}"')


def history_mentions(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of every mention of development history in `text`."""
    text = _ALLOWED.sub("", text)
    return [(kind, match.group(0)) for kind, pattern in HISTORY_PATTERNS.items() for match in pattern.finditer(text)]
