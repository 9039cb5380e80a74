"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter

from app.base_models import service
from app.base_models.schemas import BaseModelList
from app.deps import RegistryDep
from app.errors import error_responses
from app.tenants.auth import PrincipalDep

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "", response_model=BaseModelList, summary="Base models this server trains", responses=error_responses(401, 429)
)
def list_models(principal: PrincipalDep, registry: RegistryDep) -> BaseModelList:
    return BaseModelList(data=service.list_base_models(registry))
