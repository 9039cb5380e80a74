"""The FastAPI dependencies that authenticate a request: a tenant's API key, or the admin token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import get_session
from app.tenants import rate_limit
from app.tenants.service import Principal, authenticate, authenticate_admin

SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Declares the Bearer scheme in openapi.yaml; the header itself is parsed by `authenticate`
# so that every failure gets a message naming the problem.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer leap_live_<prefix>_<secret>`")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The admin token: `Authorization: Bearer $LEAP_ADMIN_TOKEN`"
)


def current_principal(
    request: Request,
    session: SessionDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The tenant behind the request's Bearer key (401 otherwise; 429 past the key's rate limit)."""
    principal = authenticate(session, authorization=request.headers.get("authorization"))
    settings = request.app.state.settings
    rate_limit.check(
        request.app.state.rate_limiter, api_key_id=str(principal.api_key_id), limit=settings.rate_limit_requests
    )
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def require_admin(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """Admin routes: the Bearer token must be LEAP_ADMIN_TOKEN (401 otherwise)."""
    authenticate_admin(
        authorization=request.headers.get("authorization"), admin_token=request.app.state.settings.admin_token
    )


AdminDep = Annotated[None, Depends(require_admin)]
