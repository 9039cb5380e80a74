"""API key format `leap_live_<prefix>_<secret>`: the prefix finds the row, the secret is hashed.

Verified keys are cached per process for LEAP_API_KEY_CACHE_TTL (VerifiedKeys); a revocation
drops every cached key in every API process at once (see rate_limit.announce_revocation)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import threading
import time
import uuid
import weakref
from dataclasses import dataclass

KEY_PREFIX = "leap_live_"
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_LENGTH = 12
SECRET_LENGTH = 40
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")
# Compared against when the prefix is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"leap-unknown-key").hexdigest()


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    prefix: str
    secret_hash: str


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    secret: str


def hash_secret(secret: str) -> str:
    """SHA-256 is enough here: the secret has 238 bits of entropy, so it cannot be guessed offline."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> GeneratedKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))
    return GeneratedKey(plaintext=f"{KEY_PREFIX}{prefix}_{secret}", prefix=prefix, secret_hash=hash_secret(secret))


def parse_key(value: str) -> ParsedKey | None:
    match = _KEY_PATTERN.match(value)
    return ParsedKey(prefix=match.group(1), secret=match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash or _DUMMY_HASH) and stored_hash is not None


def digest(presented: str) -> bytes:
    """Cache key of a presented credential (never stored in plaintext, even in memory)."""
    return hashlib.sha256(presented.encode()).digest()


@dataclass(frozen=True)
class VerifiedKey:
    tenant_id: uuid.UUID
    api_key_id: uuid.UUID
    generation: int
    """Revocation generation seen before the database read that verified the key."""
    expires: float


class VerifiedKeys:
    """API keys this process verified recently, by the digest of the presented key.

    An entry is good for `ttl_seconds` and only while the revocation generation (a counter bumped
    on every revocation: in Redis, read in the rate limit's round trip, or in this process) is
    the one seen before the key was read from the database: any revocation drops every entry."""

    def __init__(self, *, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.generation: int | None = None
        self._entries: dict[bytes, VerifiedKey] = {}
        self._lock = threading.Lock()
        _caches.add(self)

    def get(self, key: bytes) -> VerifiedKey | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires < time.monotonic():
            return None
        return entry

    def put(self, key: bytes, *, tenant_id: uuid.UUID, api_key_id: uuid.UUID, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return  # a revocation came in meanwhile
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = VerifiedKey(tenant_id, api_key_id, generation, time.monotonic() + self.ttl_seconds)

    def observe(self, generation: int | None) -> None:
        """Record the current revocation generation; a new one forgets every verified key."""
        with self._lock:
            if generation != self.generation:
                self._entries.clear()
                self.generation = generation

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_caches: weakref.WeakSet[VerifiedKeys] = weakref.WeakSet()
_local_generation = 0


def local_generation() -> int:
    """This process's revocation counter (the generation when no Redis is shared)."""
    return _local_generation


def forget_verified_keys() -> None:
    """A key was revoked: every cache in this process forgets what it verified."""
    global _local_generation
    _local_generation += 1
    for cache in list(_caches):
        cache.clear()
