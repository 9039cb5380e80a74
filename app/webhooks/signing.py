"""Standard Webhooks signatures: whsec_ secrets and `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
signed by the `standardwebhooks` library (the one receivers verify with)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A whsec_ secret: 32 random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<signature>` entry of the webhook-signature header (the body is UTF-8 JSON)."""
    return Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body.decode())


def headers(secrets_: list[str], *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """webhook-id/-timestamp/-signature; one signature per secret (two while a rotation's grace runs)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id=message_id, timestamp=timestamp, body=body) for s in secrets_),
    }
