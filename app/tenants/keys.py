"""API key format `leap_live_<prefix>_<secret>`: the prefix finds the row, the secret is hashed."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
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
