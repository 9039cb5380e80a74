"""The package version on every API response (the `X-LEAP-Version` header) and in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__

VERSION_HEADER = "X-LEAP-Version"
_HEADER = (VERSION_HEADER.lower().encode("latin-1"), __version__.encode("latin-1"))
_HEADER_DOCUMENT = {
    "description": "The LEAP version that answered (the package version, e.g. 0.2.0)",
    "schema": {"type": "string"},
}


class VersionHeaderMiddleware:
    """Pure ASGI: adds X-LEAP-Version to the start of every HTTP response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), _HEADER]}
            await send(message)

        await self.app(scope, receive, send_with_version)


def document_version_header(document: dict[str, Any]) -> dict[str, Any]:
    """Declare the header on every response of every operation (idempotent)."""
    document.setdefault("components", {}).setdefault("headers", {})[VERSION_HEADER] = _HEADER_DOCUMENT
    reference = f"#/components/headers/{VERSION_HEADER}"
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})[VERSION_HEADER] = {"$ref": reference}
    return document


def install_version(app: FastAPI) -> None:
    """Send the version header on every response and document it; call after the other middleware."""
    app.add_middleware(VersionHeaderMiddleware)  # added last, so outermost: OPTIONS answers carry it too
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        return document_version_header(generate())

    app.openapi = openapi  # type: ignore[method-assign]
