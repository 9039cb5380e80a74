"""Per-key request rate limit: a fixed window counter in Redis, or in-process on the embedded default.

The same Redis round trip (one Lua script) also reads the revocation generation, a random value
that every key revocation replaces: API processes compare it with the generation their cached keys
were verified under (app.tenants.keys.VerifiedKeys), so a revoked key is refused everywhere at once."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as redis_asyncio
from redis.commands.core import AsyncScript

from app.errors import RateLimited
from app.settings import Settings
from app.tenants import keys

REVOCATIONS_KEY = "leap:keys:revocations"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: float
    revocation_generation: int | None = None
    """The revocation counter read with this decision (None: unknown, e.g. Redis unreachable)."""


class RateLimiter(Protocol):
    def hit(self, key: str) -> Decision:
        """Count one request for `key`; refuse it when the window's budget is spent."""
        ...

    async def hit_on_loop(self, key: str) -> Decision:
        """hit() from the event loop, without blocking it."""
        ...

    async def close_on_loop(self) -> None:
        """Close what hit_on_loop opened on the running loop (the API's shutdown)."""
        ...


class NoLimit:
    def hit(self, key: str) -> Decision:
        return Decision(allowed=True, retry_after_seconds=0, revocation_generation=keys.local_generation())

    async def hit_on_loop(self, key: str) -> Decision:
        return self.hit(key)

    async def close_on_loop(self) -> None:
        pass


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
        return _decide(count, self.limit, now, window, self.window_seconds, keys.local_generation())

    async def hit_on_loop(self, key: str) -> Decision:
        return self.hit(key)  # no I/O

    async def close_on_loop(self) -> None:
        pass


# KEYS: the window's counter, the revocation counter. ARGV: counter TTL, 1 to count (0: limit off).
_HIT = """
local count = 0
if ARGV[2] == '1' then
  count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
return {count, redis.call('GET', KEYS[2]) or '0'}
"""


class RedisRateLimiter:
    """Counters shared by every API process: INCR on a key per window, expiring with it, and the
    revocation generation, in one round trip (EVALSHA). limit 0 only reads the generation."""

    def __init__(self, url: str, *, limit: int, window_seconds: float) -> None:
        self.url = url
        self.client = _client(url)
        self.limit = limit
        self.window_seconds = window_seconds
        self._script = self.client.register_script(_HIT)
        self._loop_script: tuple[asyncio.AbstractEventLoop, AsyncScript] | None = None

    def _arguments(self, key: str) -> tuple[float, int, list[str], list[int]]:
        now = time.time()
        window = int(now // self.window_seconds)
        keys_ = [f"leap:rate:{key}:{window}", REVOCATIONS_KEY]
        return now, window, keys_, [math.ceil(self.window_seconds) + 1, int(self.limit > 0)]

    def hit(self, key: str) -> Decision:
        now, window, keys_, args = self._arguments(key)
        try:
            count, generation = self._script(keys=keys_, args=args)
        except redis.RedisError:
            # Fail open: an unreachable limiter must not take the API down with it (nor can cached
            # keys be trusted without the revocation generation: they are checked in the database).
            return Decision(allowed=True, retry_after_seconds=0)
        return self._decision(count, generation, now, window)

    async def hit_on_loop(self, key: str) -> Decision:
        now, window, keys_, args = self._arguments(key)
        loop = asyncio.get_running_loop()
        if self._loop_script is None or self._loop_script[0] is not loop:  # a client per event loop
            client = redis_asyncio.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
            self._loop_script = (loop, client.register_script(_HIT))
        try:
            count, generation = await self._loop_script[1](keys=keys_, args=args)
        except redis.RedisError:
            return Decision(allowed=True, retry_after_seconds=0)  # fail open, as hit()
        return self._decision(count, generation, now, window)

    async def close_on_loop(self) -> None:
        held, self._loop_script = self._loop_script, None
        if held is not None and held[0] is asyncio.get_running_loop():
            await held[1].registered_client.aclose()

    def _decision(self, count: Any, generation: Any, now: float, window: int) -> Decision:
        if self.limit <= 0:
            return Decision(allowed=True, retry_after_seconds=0, revocation_generation=int(generation))
        return _decide(int(count), self.limit, now, window, self.window_seconds, int(generation))


def _decide(count: int, limit: int, now: float, window: int, window_seconds: float, generation: int) -> Decision:
    if count <= limit:
        return Decision(allowed=True, retry_after_seconds=0, revocation_generation=generation)
    return Decision(
        allowed=False, retry_after_seconds=(window + 1) * window_seconds - now, revocation_generation=generation
    )


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    """One client per Redis URL in this process; it is also told of revocations made here."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        return _clients[url]


def redis_url(settings: Settings) -> str | None:
    """LEAP_RATE_LIMIT_REDIS_URL, else the broker when it is Redis, else None (in-process)."""
    url = settings.rate_limit_redis_url
    if url is None and settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        url = settings.broker_url
    return url


def watch_revocations(settings: Settings) -> None:
    """Make revocations made in this process reach the API processes sharing this Redis (the CLI)."""
    url = redis_url(settings)
    if url:
        _client(url)


def announce_revocation() -> None:
    """A key was revoked (and committed): drop this process's verified keys and bump the
    revocation generation in every Redis this process knows, so other API processes drop theirs."""
    keys.forget_verified_keys()
    with _clients_lock:
        clients = list(_clients.values())
    # A random value, not a counter: a Redis that lost its data cannot bring an old one back.
    generation = secrets.randbits(62)
    for client in clients:
        try:
            client.set(REVOCATIONS_KEY, generation)
        except redis.RedisError:
            # Cached keys elsewhere expire within LEAP_API_KEY_CACHE_TTL.
            logger.exception("could not announce a key revocation to Redis")


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis when one is configured (LEAP_RATE_LIMIT_REDIS_URL or a Redis broker), else in-process.
    With the limit off (0) Redis is still read for the revocation generation."""
    window = settings.rate_limit_window.total_seconds()
    url = redis_url(settings)
    if url:
        return RedisRateLimiter(url, limit=max(0, settings.rate_limit_requests), window_seconds=window)
    if settings.rate_limit_requests <= 0:
        return NoLimit()
    return MemoryRateLimiter(limit=settings.rate_limit_requests, window_seconds=window)


def shares_revocations(limiter: RateLimiter) -> bool:
    """Whether revocations made by other processes reach this limiter's decisions."""
    return isinstance(limiter, RedisRateLimiter)


def check(limiter: RateLimiter, *, api_key_id: str, limit: int) -> None:
    """Raise RateLimited (429 with Retry-After) when this key has spent its window's budget."""
    refuse_if_limited(limiter.hit(api_key_id), limit=limit)


def refuse_if_limited(decision: Decision, *, limit: int) -> None:
    """Raise RateLimited (429 with Retry-After) for a refusing decision."""
    if not decision.allowed:
        raise RateLimited(
            f"rate limit of {limit} requests per window exceeded for this API key",
            retry_after_seconds=math.ceil(decision.retry_after_seconds),
        )
