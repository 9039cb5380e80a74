"""Tenant and API key rules: creation, revocation and authentication of a Bearer key."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from sqlalchemy.orm import Session

from app.db import on_commit
from app.errors import NotFound, Unauthorized, ValidationFailed
from app.orm import ApiKey, Tenant
from app.orm.base import utcnow
from app.tenants import keys, rate_limit, repository
from app.validation import INT32_MAX, refuse_nul


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the key it used."""

    tenant_id: uuid.UUID
    api_key_id: uuid.UUID


UPDATABLE_FIELDS = ("max_concurrent_trainings", "monthly_unit_limit", "stripe_customer_id")


def create_tenant(session: Session, *, name: str, **limits: Any) -> Tenant:
    """Create a tenant, optionally with its limits and Stripe customer."""
    name = refuse_nul("name", name).strip()
    if not 1 <= len(name) <= 200:
        raise ValidationFailed("name: must be 1-200 characters", details={"field": "name"})
    tenant = repository.add_tenant(session, name=name)
    return update_tenant(session, tenant_id=tenant.id, changes=limits) if limits else tenant


def _int32(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT32_MAX


def update_tenant(session: Session, *, tenant_id: uuid.UUID, changes: dict[str, Any]) -> Tenant:
    """Set a tenant's limits or Stripe customer (a None value clears it)."""
    tenant = get_tenant(session, tenant_id)
    for field, value in changes.items():
        if field not in UPDATABLE_FIELDS:
            raise ValidationFailed(f"{field}: cannot be changed", details={"field": field})
        # The columns are 32-bit integers; a bool is not a number of units.
        if field in ("max_concurrent_trainings", "monthly_unit_limit") and value is not None and not _int32(value):
            raise ValidationFailed(f"{field}: must be an integer 0-{INT32_MAX}", details={"field": field})
        if isinstance(value, str):
            refuse_nul(field, value)
        setattr(tenant, field, value)
    session.flush()
    return tenant


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """The tenant row, locked until the transaction ends (serialises its submissions' limit checks)."""
    tenant = repository.lock_tenant(session, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    """All tenants, oldest first."""
    return repository.list_tenants(session)


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """One tenant or NotFound."""
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def create_api_key(session: Session, *, tenant_id: uuid.UUID, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for a tenant; the plaintext is returned once and never stored."""
    get_tenant(session, tenant_id)
    refuse_nul("name", name)
    generated = keys.generate_key()
    api_key = repository.add_api_key(
        session, tenant_id=tenant_id, name=name, prefix=generated.prefix, secret_hash=generated.secret_hash
    )
    return api_key, generated.plaintext


def list_api_keys(session: Session, *, tenant_id: uuid.UUID) -> list[ApiKey]:
    """A tenant's keys (revoked ones included)."""
    get_tenant(session, tenant_id)
    return repository.list_api_keys(session, tenant_id)


def revoke_api_key(session: Session, *, key_id: uuid.UUID) -> ApiKey:
    """Revoke a key; idempotent. Requests with it fail at once: once committed, every API process
    forgets the keys it had verified (rate_limit.announce_revocation)."""
    api_key = repository.revoke_api_key(session, key_id, now=utcnow())
    if api_key is None:
        raise NotFound(f"API key {key_id} not found")
    on_commit(session, rate_limit.announce_revocation)
    return api_key


def authenticate(session: Session, *, authorization: str | None) -> Principal:
    """Resolve an `Authorization: Bearer <key>` header to its tenant, or raise Unauthorized."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization header must be 'Bearer <api key>'")
    parsed = keys.parse_key(value.strip())
    if parsed is None:
        raise Unauthorized("malformed API key; expected leap_live_<prefix>_<secret>")
    api_key = repository.find_api_key_by_prefix(session, parsed.prefix)
    if not keys.secret_matches(parsed.secret, api_key.secret_hash if api_key else None) or api_key is None:
        raise Unauthorized("invalid API key")
    if api_key.revoked_at is not None:
        raise Unauthorized("API key has been revoked")
    return Principal(tenant_id=api_key.tenant_id, api_key_id=api_key.id)


def authenticate_admin(*, authorization: str | None, admin_token: SecretStr) -> None:
    """Accept only `Authorization: Bearer <LEAP_ADMIN_TOKEN>`, compared in constant time."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <admin token>'")
    scheme, _, value = authorization.partition(" ")
    expected = admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise Unauthorized("invalid admin token")
