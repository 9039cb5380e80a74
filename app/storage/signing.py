"""HMAC signatures for the expiring download URLs of local-disk storage."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def content_disposition(filename: str) -> str:
    """attachment; filename=... with an ASCII fallback and the RFC 5987 form."""
    fallback = _UNSAFE.sub("_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


def sign(secret: str, key: str, expires: int, filename: str) -> str:
    message = f"{key}\n{expires}\n{filename}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, key: str, expires: int, filename: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, key, expires, filename), signature)
