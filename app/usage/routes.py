"""Usage endpoint for tenants: thin wrapper over app.usage.service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.errors import error_responses
from app.tenants.auth import PrincipalDep, SessionDep
from app.usage import schemas, service
from app.validation import IsoDatetime

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get(
    "",
    response_model=schemas.UsageReport,
    summary="Your usage in a period, grouped by day or base model",
    responses=error_responses(401, 422, 429),
)
def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    start: Annotated[
        IsoDatetime | None,
        Query(
            description="Inclusive, ISO 8601; default: this UTC month's start. The period (with end or its "
            "default) must be 1 second to 366 days long: otherwise a 422 names the parameter sent."
        ),
    ] = None,
    end: Annotated[
        IsoDatetime | None,
        Query(description="Exclusive, ISO 8601, after start; default: start of next UTC month"),
    ] = None,
    group_by: Annotated[schemas.GroupBy, Query(description="day (UTC) or base_model")] = "day",
) -> schemas.UsageReport:
    return service.report(session, tenant_id=principal.tenant_id, start=start, end=end, group_by=group_by)
