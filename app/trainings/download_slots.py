"""Submissions whose inputs are downloading, per tenant: each holds a slot that counts as one of
the tenant's concurrent trainings until its row commits (or it is refused), so a tenant cannot start
more downloads than it may have trainings. Slots live in Redis (shared by every API process) when
the rate limit has one, else in this process; each expires on its own if its process dies."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis

from app.settings import Settings
from app.tenants.rate_limit import redis_url


@dataclass(frozen=True)
class Slot:
    tenant_id: str
    token: str


class DownloadSlots(Protocol):
    def acquire(self, tenant_id: str, *, room: int, ttl_seconds: float) -> Slot | None:
        """A slot when fewer than `room` are held for the tenant; None when they are all taken."""
        ...

    def release(self, slot: Slot) -> None:
        """Give the slot back (the submission committed or was refused)."""
        ...

    def count(self, tenant_id: str) -> int:
        """Slots the tenant holds now."""
        ...


class MemoryDownloadSlots:
    """One process's slots: exact for `leap serve` (one API process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}

    def _live(self, tenant_id: str, now: float) -> dict[str, float]:
        held = {token: expiry for token, expiry in self._held.get(tenant_id, {}).items() if expiry > now}
        self._held[tenant_id] = held
        return held

    def acquire(self, tenant_id: str, *, room: int, ttl_seconds: float) -> Slot | None:
        now = time.monotonic()
        with self._lock:
            held = self._live(tenant_id, now)
            if len(held) >= room:
                return None
            token = secrets.token_hex(8)
            held[token] = now + ttl_seconds
            return Slot(tenant_id, token)

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._held.get(slot.tenant_id, {}).pop(slot.token, None)
            if not self._held.get(slot.tenant_id):
                self._held.pop(slot.tenant_id, None)

    def count(self, tenant_id: str) -> int:
        with self._lock:
            return len(self._live(tenant_id, time.monotonic()))


# KEYS: the tenant's sorted set (member: token, score: expiry). ARGV: now, expiry, token, room.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class RedisDownloadSlots:
    """Slots shared by every API process: a sorted set per tenant, checked and added in one script."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._acquire = self.client.register_script(_ACQUIRE)

    @staticmethod
    def _key(tenant_id: str) -> str:
        return f"leap:downloads:{tenant_id}"

    def acquire(self, tenant_id: str, *, room: int, ttl_seconds: float) -> Slot | None:
        now = time.time()
        token = secrets.token_hex(8)
        try:
            taken = self._acquire(keys=[self._key(tenant_id)], args=[now, now + ttl_seconds, token, room])
        except redis.RedisError:
            # Fail open, as the rate limit does: the committed count still bounds the tenant.
            return Slot(tenant_id, token)
        return Slot(tenant_id, token) if int(taken) else None

    def release(self, slot: Slot) -> None:
        with contextlib.suppress(redis.RedisError):  # it expires on its own
            self.client.zrem(self._key(slot.tenant_id), slot.token)

    def count(self, tenant_id: str) -> int:
        key = self._key(tenant_id)
        try:
            self.client.zremrangebyscore(key, "-inf", time.time())
            return int(self.client.zcard(key))
        except redis.RedisError:
            return 0


def make_download_slots(settings: Settings) -> DownloadSlots:
    """Redis slots with the rate limit's Redis (LEAP_RATE_LIMIT_REDIS_URL or a Redis broker), else in-process."""
    url = redis_url(settings)
    return RedisDownloadSlots(url) if url else MemoryDownloadSlots()


def slot_ttl_seconds(settings: Settings) -> float:
    """How long a slot outlives its process: the download deadline plus time to store and commit."""
    return settings.input_url_deadline.total_seconds() + 300
