"""openapi.yaml is generated from the app and committed; it must not drift."""

from __future__ import annotations

import yaml

from app.openapi_export import openapi_document

from .helpers import REPO_ROOT


def test_committed_openapi_matches_the_app():
    committed = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text())
    assert committed == openapi_document(), "openapi.yaml is stale: run `make openapi` and commit it"


def test_every_route_declares_its_error_responses():
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/trainings") or path == "/v1/models":
                assert "401" in operation["responses"], (method, path)
                assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
