"""Exponential backoff with a cap and jitter, for every retry loop (trainings, billing, the client)."""

from __future__ import annotations

import random


def backoff_seconds(retry: int, *, base: float, cap: float, jitter: tuple[float, float]) -> float:
    """`base * 2**retry`, at most `cap`, times a uniform draw from `jitter` (e.g. (1.0, 1.25): up to 25% more)."""
    return min(cap, base * 2 ** max(retry, 0)) * random.uniform(*jitter)
