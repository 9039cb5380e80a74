"""The OpenAPI document as strict as the server: no `null` where a client cannot send one.

pydantic writes an optional value as `anyOf: [X, {type: null}]`. In a query string, a header or a
form field there is no null, only absence: a generated client would send the text "null", which the
server refuses. So those schemas say X, and leaving the parameter out is how to send nothing."""

from __future__ import annotations

from typing import Any

_NULL = {"type": "null"}


def without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with a `null` alternative removed from its top-level anyOf (the rest kept)."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or _NULL not in options:
        return schema
    rest = [option for option in options if option != _NULL]
    stripped = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(rest) == 1:
        return {**rest[0], **stripped}
    return {**stripped, "anyOf": rest}


def form_without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A form body's object schema whose properties cannot be null (a form field is text or absent)."""
    properties = schema.get("properties", {})
    return {**schema, "properties": {name: without_null(value) for name, value in properties.items()}}


def strict_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every parameter's schema stripped of `null` (in place; returned)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if "schema" in parameter:
                    parameter["schema"] = without_null(parameter["schema"])
    return document
