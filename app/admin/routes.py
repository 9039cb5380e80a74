"""Admin endpoints (Bearer LEAP_ADMIN_TOKEN): thin wrappers over the tenants service, shared with the CLI."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.admin import schemas
from app.billing import service as billing
from app.deps import SettingsDep
from app.errors import NotFound, error_responses
from app.orm import ApiKey, Tenant
from app.tenants import service as tenants
from app.tenants.auth import AdminDep, SessionDep
from app.usage import schemas as usage_schemas
from app.usage import service as usage
from app.validation import IsoDatetime

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _id(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as error:
        raise NotFound(f"{what} {value} not found") from error


def tenant_view(tenant: Tenant) -> schemas.Tenant:
    return schemas.Tenant(
        id=str(tenant.id),
        name=tenant.name,
        created_at=tenant.created_at,
        max_concurrent_trainings=tenant.max_concurrent_trainings,
        monthly_unit_limit=tenant.monthly_unit_limit,
        stripe_customer_id=tenant.stripe_customer_id,
    )


def key_view(api_key: ApiKey) -> schemas.ApiKey:
    return schemas.ApiKey(
        id=str(api_key.id),
        tenant_id=str(api_key.tenant_id),
        name=api_key.name,
        prefix=api_key.prefix,
        created_at=api_key.created_at,
        revoked_at=api_key.revoked_at,
    )


@router.post(
    "/tenants",
    status_code=201,
    response_model=schemas.Tenant,
    summary="Create a tenant",
    responses=error_responses(401, 422),
)
def create_tenant(body: schemas.TenantCreate, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    limits = body.model_dump(exclude_unset=True, exclude={"name"})
    return tenant_view(tenants.create_tenant(session, name=body.name, **limits))


@router.get("/tenants", response_model=schemas.TenantList, summary="List tenants", responses=error_responses(401))
def list_tenants(_: AdminDep, session: SessionDep) -> schemas.TenantList:
    return schemas.TenantList(data=[tenant_view(tenant) for tenant in tenants.list_tenants(session)])


@router.get(
    "/tenants/{tenant_id}", response_model=schemas.Tenant, summary="Get a tenant", responses=error_responses(401, 404)
)
def get_tenant(tenant_id: str, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    return tenant_view(tenants.get_tenant(session, _id(tenant_id, "tenant")))


@router.patch(
    "/tenants/{tenant_id}",
    response_model=schemas.Tenant,
    summary="Change a tenant's limits or Stripe customer",
    responses=error_responses(401, 404, 422),
)
def update_tenant(tenant_id: str, body: schemas.TenantUpdate, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    changes = body.model_dump(exclude_unset=True)
    return tenant_view(tenants.update_tenant(session, tenant_id=_id(tenant_id, "tenant"), changes=changes))


@router.post(
    "/tenants/{tenant_id}/keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    summary="Create an API key (shown once)",
    responses=error_responses(401, 404, 422),
)
def create_key(tenant_id: str, body: schemas.ApiKeyCreate, _: AdminDep, session: SessionDep) -> schemas.ApiKeyCreated:
    api_key, plaintext = tenants.create_api_key(session, tenant_id=_id(tenant_id, "tenant"), name=body.name)
    return schemas.ApiKeyCreated(**key_view(api_key).model_dump(), key=plaintext)


@router.get(
    "/tenants/{tenant_id}/keys",
    response_model=schemas.ApiKeyList,
    summary="List a tenant's API keys (revoked ones included)",
    responses=error_responses(401, 404),
)
def list_keys(tenant_id: str, _: AdminDep, session: SessionDep) -> schemas.ApiKeyList:
    keys = tenants.list_api_keys(session, tenant_id=_id(tenant_id, "tenant"))
    return schemas.ApiKeyList(data=[key_view(api_key) for api_key in keys])


@router.post(
    "/keys/{key_id}/revoke",
    response_model=schemas.ApiKey,
    summary="Revoke an API key (idempotent; requests with it fail at once)",
    responses=error_responses(401, 404),
)
def revoke_key(key_id: str, _: AdminDep, session: SessionDep) -> schemas.ApiKey:
    return key_view(tenants.revoke_api_key(session, key_id=_id(key_id, "API key")))


@router.get(
    "/usage",
    response_model=usage_schemas.UsageExport,
    summary="Export usage records of any tenant and period (JSON or CSV)",
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "The records"},
        **error_responses(401, 404, 422),
    },
)
def export_usage(
    _: AdminDep,
    session: SessionDep,
    start: Annotated[IsoDatetime, Query(description="Inclusive, ISO 8601")],
    end: Annotated[IsoDatetime, Query(description="Exclusive, ISO 8601")],
    tenant_id: Annotated[str | None, Query(description="One tenant; default: all")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> usage_schemas.UsageExport | Response:
    records = usage.export(session, tenant_id=_id(tenant_id, "tenant") if tenant_id else None, start=start, end=end)
    if format == "csv":
        return Response(usage.to_csv(records), media_type="text/csv")
    return usage_schemas.UsageExport(data=records)


@router.post(
    "/billing/replay",
    status_code=202,
    response_model=schemas.BillingReplayResult,
    summary="Send usage records to the billing sinks again (idempotent per record)",
    responses=error_responses(401, 404, 422),
)
def replay_billing(
    body: schemas.BillingReplay, _: AdminDep, session: SessionDep, settings: SettingsDep
) -> schemas.BillingReplayResult:
    replayed = billing.replay(
        session,
        settings=settings,
        tenant_id=_id(body.tenant_id, "tenant") if body.tenant_id else None,
        start=body.start,
        end=body.end,
    )
    return schemas.BillingReplayResult(replayed=replayed)
