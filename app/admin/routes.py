"""Admin endpoints (Bearer LEAP_ADMIN_TOKEN): thin wrappers over the tenants service, shared with the CLI."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.admin import schemas
from app.billing import service as billing
from app.deps import SettingsDep
from app.errors import error_responses
from app.ids import id_or_404
from app.tenants import service as tenants
from app.tenants.auth import AdminDep, SessionDep
from app.usage import schemas as usage_schemas
from app.usage import service as usage
from app.validation import IsoDatetime

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post(
    "/tenants",
    status_code=201,
    response_model=schemas.Tenant,
    summary="Create a tenant",
    responses=error_responses(401, 422),
)
def create_tenant(body: schemas.TenantCreate, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    limits = body.model_dump(exclude_unset=True, exclude={"name"})
    return schemas.Tenant.model_validate(tenants.create_tenant(session, name=body.name, **limits))


@router.get("/tenants", response_model=schemas.TenantList, summary="List tenants", responses=error_responses(401))
def list_tenants(_: AdminDep, session: SessionDep) -> schemas.TenantList:
    return schemas.TenantList(data=[schemas.Tenant.model_validate(tenant) for tenant in tenants.list_tenants(session)])


@router.get(
    "/tenants/{tenant_id}", response_model=schemas.Tenant, summary="Get a tenant", responses=error_responses(401, 404)
)
def get_tenant(tenant_id: str, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    return schemas.Tenant.model_validate(tenants.get_tenant(session, id_or_404(tenant_id, "tenant")))


@router.patch(
    "/tenants/{tenant_id}",
    response_model=schemas.Tenant,
    summary="Change a tenant's limits or Stripe customer",
    responses=error_responses(401, 404, 422),
)
def update_tenant(tenant_id: str, body: schemas.TenantUpdate, _: AdminDep, session: SessionDep) -> schemas.Tenant:
    changes = body.model_dump(exclude_unset=True)
    return schemas.Tenant.model_validate(
        tenants.update_tenant(session, tenant_id=id_or_404(tenant_id, "tenant"), changes=changes)
    )


@router.post(
    "/tenants/{tenant_id}/keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    summary="Create an API key (shown once)",
    responses=error_responses(401, 404, 422),
)
def create_key(tenant_id: str, body: schemas.ApiKeyCreate, _: AdminDep, session: SessionDep) -> schemas.ApiKeyCreated:
    api_key, plaintext = tenants.create_api_key(session, tenant_id=id_or_404(tenant_id, "tenant"), name=body.name)
    return schemas.ApiKeyCreated(**schemas.ApiKey.model_validate(api_key).model_dump(), key=plaintext)


@router.get(
    "/tenants/{tenant_id}/keys",
    response_model=schemas.ApiKeyList,
    summary="List a tenant's API keys (revoked ones included)",
    responses=error_responses(401, 404),
)
def list_keys(tenant_id: str, _: AdminDep, session: SessionDep) -> schemas.ApiKeyList:
    keys = tenants.list_api_keys(session, tenant_id=id_or_404(tenant_id, "tenant"))
    return schemas.ApiKeyList(data=[schemas.ApiKey.model_validate(api_key) for api_key in keys])


@router.post(
    "/keys/{key_id}/revoke",
    response_model=schemas.ApiKey,
    summary="Revoke an API key (idempotent; requests with it fail at once)",
    responses=error_responses(401, 404),
)
def revoke_key(key_id: str, _: AdminDep, session: SessionDep) -> schemas.ApiKey:
    return schemas.ApiKey.model_validate(tenants.revoke_api_key(session, key_id=id_or_404(key_id, "API key")))


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
    end: Annotated[IsoDatetime, Query(description="Exclusive, ISO 8601; after start (equal: 422)")],
    tenant_id: Annotated[str | None, Query(description="One tenant; default: all")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> usage_schemas.UsageExport | Response:
    records = usage.export(
        session, tenant_id=id_or_404(tenant_id, "tenant") if tenant_id else None, start=start, end=end
    )
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
        tenant_id=id_or_404(body.tenant_id, "tenant") if body.tenant_id else None,
        start=body.start,
        end=body.end,
    )
    return schemas.BillingReplayResult(replayed=replayed)
