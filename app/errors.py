"""Typed failures (LeapError hierarchy) and the one handler that renders them."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class LeapError(Exception):
    """An expected failure with a stable code; rendered as {"error": {code, message, details}}."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers


class ValidationFailed(LeapError):
    status_code = 422
    code = "validation_error"


class InvalidImages(LeapError):
    status_code = 422
    code = "invalid_images"


class InvalidExamples(LeapError):
    status_code = 422
    code = "invalid_examples"


class PayloadTooLarge(LeapError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(LeapError):
    status_code = 415
    code = "unsupported_media_type"


class Unauthorized(LeapError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None):
        super().__init__(message, details=details, headers={"WWW-Authenticate": "Bearer"})


class NotFound(LeapError):
    status_code = 404
    code = "not_found"


class Conflict(LeapError):
    status_code = 409
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class PaymentRequired(LeapError):
    status_code = 402
    code = "quota_exceeded"


class Forbidden(LeapError):
    status_code = 403
    code = "forbidden"


class RateLimited(LeapError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int, details: dict[str, Any] | None = None):
        retry_after_seconds = max(int(retry_after_seconds), 1)
        super().__init__(
            message,
            details={"retry_after_seconds": retry_after_seconds, **(details or {})},
            headers={"Retry-After": str(retry_after_seconds)},
        )


class ServiceUnavailable(LeapError):
    status_code = 503
    code = "unavailable"


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    """The shape of every error response."""

    error: ErrorBody


_DESCRIPTIONS = {
    400: "Malformed request (e.g. a broken multipart body)",
    401: "Missing, malformed, unknown or revoked API key",
    402: "The tenant's monthly quota of billable units would be exceeded",
    403: "Not allowed for this credential",
    404: "No such resource for this tenant",
    409: "Conflicts with the current state",
    413: "Request or file too large",
    415: "Wrong content type",
    422: "A field, an image or a text example is invalid, a text part is over its size limit, or a JSON body "
    "is not UTF-8 JSON; `details` names it (`field`, or `file` and `line`)",
    429: "Too many requests or concurrent trainings; retry after `Retry-After` seconds",
    503: "A dependency is unreachable",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the errors a route can return."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in status_codes}


def render_error(
    status_code: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status_code, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def plain_message(message: str) -> str:
    """A pydantic error message without the "Value error, " prefix it puts before a validator's own text."""
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _problem(item: Any) -> dict[str, str]:
    """{field, message} of one pydantic error; a body that is not JSON names `body`."""
    if item.get("type") == "json_invalid":
        detail = (item.get("ctx") or {}).get("error", "")
        return {"field": "body", "message": f"not valid JSON ({detail} at position {item['loc'][-1]})"}
    parts = [str(part) for part in item.get("loc", ()) if part not in ("body", "query")]
    return {"field": ".".join(parts), "message": plain_message(item.get("msg", ""))}


def install_error_handlers(app: FastAPI) -> None:
    """Render LeapError, request validation and Starlette HTTP errors in the one error shape."""

    @app.exception_handler(LeapError)
    async def _leap_error(request: Request, error: LeapError) -> JSONResponse:
        return render_error(error.status_code, error.code, error.message, error.details, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item) for item in error.errors()]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return render_error(422, "validation_error", message, {"field": first["field"], "errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and isinstance(error.__cause__, ValueError):
            # FastAPI answers a JSON body it cannot decode as text (not UTF-8) with a bare 400,
            # where `{bad` is a 422 naming the body: answer both alike.
            problem = {"field": "body", "message": f"not UTF-8 JSON ({error.__cause__})"[:300]}
            message = f"body: {problem['message']}"
            return render_error(422, "validation_error", message, {"field": "body", "errors": [problem]})
        code = _HTTP_CODES.get(error.status_code, "http_error")
        return render_error(error.status_code, code, str(error.detail), None, dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(500, "internal", "internal server error")
