"""The FastAPI dependencies that authenticate a request: a tenant's API key, or the admin token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import get_session, read_in_thread
from app.settings import Settings
from app.tenants import keys, rate_limit
from app.tenants.service import Principal, authenticate, authenticate_admin

SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# Declares the Bearer scheme in openapi.yaml; the header itself is parsed by `authenticate`
# so that every failure gets a message naming the problem.
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer leap_live_<prefix>_<secret>`")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The admin token: `Authorization: Bearer $LEAP_ADMIN_TOKEN`"
)


def make_key_cache(settings: Settings, limiter: rate_limit.RateLimiter) -> keys.VerifiedKeys | None:
    """The verified-key cache, where revocations reach it at once: a shared Redis, or the embedded
    default's single process. None when LEAP_API_KEY_CACHE_TTL is 0."""
    ttl = settings.api_key_cache_ttl.total_seconds()
    if ttl <= 0 or not (rate_limit.shares_revocations(limiter) or settings.is_embedded):
        return None
    return keys.VerifiedKeys(ttl_seconds=ttl)


def resolve_principal(request: Request, session: Session, *, counted: rate_limit.Decision | None = None) -> Principal:
    """The tenant behind the request's Bearer key (401 otherwise; 429 past the key's rate limit).

    Blocking (database and Redis): call it from a worker thread. A key verified within
    LEAP_API_KEY_CACHE_TTL costs no database query, only the rate limit's Redis round trip, which
    also returns the revocation generation: if a key was revoked since, the cache is dropped and
    the key checked in the database again. `counted`: this request's rate-limit decision, when
    resolve_principal_on_loop took it already."""
    authorization = request.headers.get("authorization")
    state = request.app.state
    limiter: rate_limit.RateLimiter = state.rate_limiter
    limit = state.settings.rate_limit_requests
    cache: keys.VerifiedKeys | None = state.verified_keys
    if cache is None or not authorization:
        principal = authenticate(session, authorization=authorization)
        rate_limit.check(limiter, api_key_id=str(principal.api_key_id), limit=limit)
        return principal
    digest = keys.digest(authorization)
    decision = counted
    if decision is None:
        cached = cache.get(digest)
        if cached is not None:
            decision = limiter.hit(str(cached.api_key_id))
            verified = _still_verified(cached, decision, limit=limit)
            if verified is not None:
                return verified
    if decision is not None:
        cache.observe(decision.revocation_generation)  # a key was revoked: forget them all
    generation = cache.generation  # seen before the database read
    principal = authenticate(session, authorization=authorization)
    if decision is None:  # (a cache hit has counted this request already: same prefix, same key)
        decision = limiter.hit(str(principal.api_key_id))
    cache.observe(decision.revocation_generation)
    if generation is not None and decision.revocation_generation == generation:
        cache.put(digest, tenant_id=principal.tenant_id, api_key_id=principal.api_key_id, generation=generation)
    rate_limit.refuse_if_limited(decision, limit=limit)
    return principal


def _still_verified(cached: keys.VerifiedKey, decision: rate_limit.Decision, *, limit: int) -> Principal | None:
    """The cached key's principal when no key was revoked since it was verified (429 past its rate
    limit); None when it must be checked in the database again."""
    if decision.revocation_generation is None or decision.revocation_generation != cached.generation:
        return None
    rate_limit.refuse_if_limited(decision, limit=limit)
    return Principal(tenant_id=cached.tenant_id, api_key_id=cached.api_key_id)


async def resolve_principal_on_loop(request: Request) -> Principal:
    """resolve_principal from the event loop: a key in the verified-key cache costs one rate-limit
    round trip on the loop and no thread; any other is checked in the database on a read thread."""
    authorization = request.headers.get("authorization")
    state = request.app.state
    cache: keys.VerifiedKeys | None = state.verified_keys
    counted = None
    if cache is not None and authorization:
        cached = cache.get(keys.digest(authorization))
        if cached is not None:
            counted = await state.rate_limiter.hit_on_loop(str(cached.api_key_id))
            principal = _still_verified(cached, counted, limit=state.settings.rate_limit_requests)
            if principal is not None:
                return principal
    return await read_in_thread(state.database, lambda session: resolve_principal(request, session, counted=counted))


async def current_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The tenant behind the request's Bearer key (401 otherwise; 429 past the key's rate limit):
    resolve_principal_on_loop, so a cached key costs no thread and a checked one its own short read."""
    return await resolve_principal_on_loop(request)


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
