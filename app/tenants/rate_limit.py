"""Per-key request rate limit: a fixed window counter in Redis, or in-process on the embedded default."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis

from app.errors import RateLimited
from app.settings import Settings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: float


class RateLimiter(Protocol):
    def hit(self, key: str) -> Decision:
        """Count one request for `key`; refuse it when the window's budget is spent."""
        ...


class NoLimit:
    def hit(self, key: str) -> Decision:
        return Decision(allowed=True, retry_after_seconds=0)


class MemoryRateLimiter:
    """One process's counters: exact for `leap serve` (one API process), per process otherwise."""

    def __init__(self, *, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str) -> Decision:
        now = time.time()
        window = int(now // self.window_seconds)
        with self._lock:
            if len(self._counts) > 10_000:  # forget windows that ended
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
        return _decide(count, self.limit, now, window, self.window_seconds)


class RedisRateLimiter:
    """Counters shared by every API process: INCR on a key per window, expiring with it."""

    def __init__(self, url: str, *, limit: int, window_seconds: float) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.limit = limit
        self.window_seconds = window_seconds

    def hit(self, key: str) -> Decision:
        now = time.time()
        window = int(now // self.window_seconds)
        redis_key = f"leap:rate:{key}:{window}"
        try:
            pipeline = self.client.pipeline()
            pipeline.incr(redis_key)
            pipeline.expire(redis_key, math.ceil(self.window_seconds) + 1)
            count = int(pipeline.execute()[0])
        except redis.RedisError:
            # Fail open: an unreachable limiter must not take the API down with it.
            return Decision(allowed=True, retry_after_seconds=0)
        return _decide(count, self.limit, now, window, self.window_seconds)


def _decide(count: int, limit: int, now: float, window: int, window_seconds: float) -> Decision:
    if count <= limit:
        return Decision(allowed=True, retry_after_seconds=0)
    return Decision(allowed=False, retry_after_seconds=(window + 1) * window_seconds - now)


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis when one is configured (LEAP_RATE_LIMIT_REDIS_URL or a Redis broker), else in-process."""
    if settings.rate_limit_requests <= 0:
        return NoLimit()
    window = settings.rate_limit_window.total_seconds()
    url = settings.rate_limit_redis_url
    if url is None and settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        url = settings.broker_url
    if url:
        return RedisRateLimiter(url, limit=settings.rate_limit_requests, window_seconds=window)
    return MemoryRateLimiter(limit=settings.rate_limit_requests, window_seconds=window)


def check(limiter: RateLimiter, *, api_key_id: str, limit: int) -> None:
    """Raise RateLimited (429 with Retry-After) when this key has spent its window's budget."""
    decision = limiter.hit(api_key_id)
    if not decision.allowed:
        raise RateLimited(
            f"rate limit of {limit} requests per window exceeded for this API key",
            retry_after_seconds=math.ceil(decision.retry_after_seconds),
        )
