"""Webhook endpoints, the tenant's training-URL secret and the delivery log: thin wrappers over the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.deps import SettingsDep
from app.errors import error_responses
from app.tenants.auth import PrincipalDep, SessionDep
from app.webhooks import schemas, service

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.post(
    "/webhook-endpoints",
    status_code=201,
    response_model=schemas.EndpointWithSecret,
    summary="Register a webhook endpoint (its secret is in the response)",
    responses=error_responses(401, 422, 429),
)
def create_endpoint(
    body: schemas.EndpointCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> schemas.EndpointWithSecret:
    endpoint = service.create_endpoint(session, principal=principal, request=body, settings=settings)
    return schemas.EndpointWithSecret.model_validate(endpoint)


@router.get(
    "/webhook-endpoints",
    response_model=schemas.EndpointList,
    summary="List your webhook endpoints (disabled ones say why)",
    responses=error_responses(401, 429),
)
def list_endpoints(principal: PrincipalDep, session: SessionDep) -> schemas.EndpointList:
    endpoints = service.list_endpoints(session, principal=principal)
    return schemas.EndpointList(data=[schemas.Endpoint.model_validate(endpoint) for endpoint in endpoints])


@router.get(
    "/webhook-endpoints/{endpoint_id}",
    response_model=schemas.Endpoint,
    summary="Get a webhook endpoint",
    responses=error_responses(401, 404, 429),
)
def get_endpoint(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> schemas.Endpoint:
    return schemas.Endpoint.model_validate(service.get_endpoint(session, principal=principal, endpoint_id=endpoint_id))


@router.patch(
    "/webhook-endpoints/{endpoint_id}",
    response_model=schemas.Endpoint,
    summary="Change a webhook endpoint, or re-enable it",
    responses=error_responses(401, 404, 422, 429),
)
def update_endpoint(
    endpoint_id: str,
    body: schemas.EndpointUpdate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> schemas.Endpoint:
    endpoint = service.update_endpoint(
        session, principal=principal, endpoint_id=endpoint_id, request=body, settings=settings
    )
    return schemas.Endpoint.model_validate(endpoint)


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a webhook endpoint",
    responses=error_responses(401, 404, 429),
)
def delete_endpoint(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    service.delete_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    return Response(status_code=204)


@router.get(
    "/webhook-endpoints/{endpoint_id}/secret",
    response_model=schemas.Secret,
    summary="Get a webhook endpoint's signing secret",
    responses=error_responses(401, 404, 429),
)
def get_endpoint_secret(endpoint_id: str, principal: PrincipalDep, session: SessionDep) -> schemas.Secret:
    endpoint = service.get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    return schemas.Secret.model_validate(endpoint)


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=schemas.Secret,
    summary="Rotate the secret; the old one also signs for LEAP_WEBHOOK_SECRET_GRACE",
    responses=error_responses(401, 404, 429),
)
def rotate_secret(
    endpoint_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> schemas.Secret:
    endpoint = service.rotate_secret(session, principal=principal, endpoint_id=endpoint_id, settings=settings)
    return schemas.Secret.model_validate(endpoint)


@router.get(
    "/webhook-secret",
    response_model=schemas.Secret,
    summary="The secret signing deliveries to trainings' own webhook_url",
    responses=error_responses(401, 429),
)
def get_tenant_secret(principal: PrincipalDep, session: SessionDep) -> schemas.Secret:
    return schemas.Secret(secret=service.tenant_secret(session, tenant_id=principal.tenant_id))


@router.get(
    "/webhook-deliveries",
    response_model=schemas.DeliveryList,
    summary="Your webhook deliveries with every attempt, newest first",
    responses=error_responses(401, 404, 422, 429),
)
def list_deliveries(
    principal: PrincipalDep,
    session: SessionDep,
    endpoint_id: Annotated[str | None, Query(description="Only this endpoint's")] = None,
    training_id: Annotated[str | None, Query(description="Only this training's")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = 50,
) -> schemas.DeliveryList:
    deliveries, next_cursor = service.list_deliveries(
        session, principal=principal, endpoint_id=endpoint_id, training_id=training_id, limit=limit, cursor=cursor
    )
    return schemas.DeliveryList(data=deliveries, next_cursor=next_cursor)


@router.get(
    "/webhook-deliveries/{delivery_id}",
    response_model=schemas.Delivery,
    summary="Get a webhook delivery with every attempt",
    responses=error_responses(401, 404, 429),
)
def get_delivery(delivery_id: str, principal: PrincipalDep, session: SessionDep) -> schemas.Delivery:
    delivery = service.get_delivery(session, principal=principal, delivery_id=delivery_id)
    return service.present(session, [delivery])[0]


@router.post(
    "/webhook-deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=schemas.Delivery,
    summary="Send a delivery again now (same webhook-id)",
    responses=error_responses(401, 404, 422, 429),
)
def redeliver(
    delivery_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> schemas.Delivery:
    delivery = service.redeliver(session, principal=principal, delivery_id=delivery_id, settings=settings)
    return service.present(session, [delivery])[0]
