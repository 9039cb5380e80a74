"""The FastAPI dependency that authenticates a request's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import get_session
from app.tenants.service import Principal, authenticate

SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Declares the Bearer scheme in openapi.yaml; the header itself is parsed by `authenticate`
# so that every failure gets a message naming the problem.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer leap_live_<prefix>_<secret>`")


def current_principal(
    request: Request,
    session: SessionDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The tenant behind the request's Bearer key (401 otherwise)."""
    return authenticate(session, authorization=request.headers.get("authorization"))


PrincipalDep = Annotated[Principal, Depends(current_principal)]
