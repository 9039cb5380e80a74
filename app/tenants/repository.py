"""Every query on tenants and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.orm import ApiKey, Tenant


def add_tenant(session: Session, *, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    query = select(Tenant).where(Tenant.id == tenant_id).with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def get_api_key(session: Session, key_id: uuid.UUID) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


def add_api_key(session: Session, *, tenant_id: uuid.UUID, name: str, prefix: str, secret_hash: str) -> ApiKey:
    api_key = ApiKey(tenant_id=tenant_id, name=name, prefix=prefix, secret_hash=secret_hash)
    session.add(api_key)
    session.flush()
    return api_key


def find_api_key_by_prefix(session: Session, prefix: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()


def list_api_keys(session: Session, tenant_id: uuid.UUID) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    return list(session.scalars(query))


def revoke_api_key(session: Session, key_id: uuid.UUID, *, now: datetime) -> ApiKey | None:
    statement = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    session.execute(statement)
    return session.get(ApiKey, key_id, populate_existing=True)
