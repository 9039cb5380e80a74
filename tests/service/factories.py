"""Test data: tenants with keys, images, zips, and a helper to submit trainings."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from app.db import Database, unit_of_work
from app.tenants import service as tenants


@dataclass(frozen=True)
class TenantKey:
    tenant_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(database: Database, *, name: str = "acme") -> TenantKey:
    with unit_of_work(database.session_factory) as session:
        tenant = tenants.create_tenant(session, name=name)
        _, key = tenants.create_api_key(session, tenant_id=tenant.id, name="test")
        return TenantKey(tenant_id=str(tenant.id), key=key)


def png_bytes(
    *,
    size: tuple[int, int] = (48, 48),
    color: tuple[int, int, int] = (200, 30, 30),
    image_format: str = "PNG",
) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):  # a little structure so images differ from a flat fill
        image.putpixel((x, x % size[1]), (x % 256, 255 - x % 256, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def image_files(count: int = 3, **kwargs: Any) -> list[tuple[str, tuple[str, bytes, str]]]:
    """`files=` for httpx: `count` distinct PNGs in the images field."""
    return [
        (
            "images",
            (f"image-{index}.png", png_bytes(color=(index * 40 % 256, 80, 120), **kwargs), "image/png"),
        )  # type: ignore[arg-type]
        for index in range(count)
    ]


def zip_bytes(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pixel_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the data is one compressed row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row, 9)) + chunk(b"IEND", b"")


def submit(
    client: TestClient,
    tenant: TenantKey,
    *,
    files: list | None = None,
    data: dict | None = None,
    headers: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/trainings",
        files=files if files is not None else image_files(),
        data=data or {},
        headers=tenant.headers | (headers or {}),
    )


TEXT_MODEL = "smollm2-135m"
"""The text base model of the bundled registry (the API needs no weights to accept a submission)."""


def text_files(count: int = 3, *, token: str = "<leap>") -> list[tuple[str, tuple[str, bytes, str]]]:
    """`files=` for httpx: `count` distinct .txt examples in the examples field, each using the token."""
    return [
        (
            "examples",
            (f"example-{index}.txt", f"My friend {token} said hello {index} times today.\n".encode(), "text/plain"),
        )
        for index in range(count)
    ]


def jsonl_bytes(lines: Sequence[object]) -> bytes:
    """A .jsonl file: each item JSON-encoded on its own line (str items are written as they are)."""
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def jsonl_file(lines: Sequence[object], name: str = "examples.jsonl") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("examples", (name, jsonl_bytes(lines), "application/jsonl"))]
