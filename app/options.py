"""OPTIONS on any API path: 204 with an Allow header naming the path's methods, without a key.

Answered once, here, for every route (FastAPI would answer 405): a client or a proxy can ask what a
path accepts, as with a CORS preflight, before it holds a key. A path no route has is still a 404.
A CORS middleware, if one is ever added, wraps this one and answers preflights itself first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class PathMethods:
    """One route's full path (its template and regex) and methods."""

    path: str
    regex: re.Pattern[str]
    methods: frozenset[str]


def route_table(routes: Sequence[BaseRoute]) -> list[PathMethods]:
    """Every HTTP route of the app, the included routers' routes with their prefixes."""
    table = []
    contexts: Iterable[Any] = iter_route_contexts(routes)
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and methods:  # mounts and websockets say nothing about methods
            regex, _, _ = compile_path(path)
            table.append(PathMethods(path=path, regex=regex, methods=frozenset(methods)))
    return table


def allowed_methods(table: list[PathMethods], path: str) -> tuple[set[str], PathMethods | None]:
    """The methods the routes declare for `path`, and the first route on it (None: no route has it)."""
    methods: set[str] = set()
    first = None
    for route in table:
        if route.regex.match(path):
            methods |= route.methods
            first = first or route
    return methods, first


def allow_header(methods: set[str]) -> str:
    """e.g. `GET, POST, OPTIONS`: the usual order, OPTIONS last."""
    return ", ".join(sorted(methods | {"OPTIONS"}, key=lambda method: (METHOD_ORDER + (method,)).index(method)))


class OptionsMiddleware:
    """Pure ASGI: every other request passes through after one comparison."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.table: list[PathMethods] | None = None  # built on first use: every router is included by then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        if self.table is None:
            self.table = route_table(scope["app"].routes)
        methods, route = allowed_methods(self.table, get_route_path(scope))
        if route is None or "OPTIONS" in methods:
            await self.app(scope, receive, send)  # an unknown path (404), or a route that answers OPTIONS itself
            return
        scope["route"] = route  # the metrics label it by its path template
        await Response(status_code=204, headers={"Allow": allow_header(methods)})(scope, receive, send)
