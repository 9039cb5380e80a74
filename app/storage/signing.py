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
    # Bytes, not str: compare_digest raises TypeError on non-ASCII text (a garbled link is just invalid).
    expected = sign(secret, key, expires, filename).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", errors="replace"))
