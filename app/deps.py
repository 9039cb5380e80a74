"""Request dependencies for the objects create_app builds once (settings, storage, registry).

They are `async def` only because they do no I/O: FastAPI then runs them on the event loop
instead of paying a thread-pool hop for each.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.public_url import request_base_url
from app.settings import Settings
from app.storage import Storage
from app.trainings.presenter import ArtifactLinks
from models.registry import Registry


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[Registry, Depends(get_registry)]


def artifact_links(request: Request) -> ArtifactLinks:
    """Presigns artifact URLs and bases a training's `urls`: LEAP_PUBLIC_URL, else the address this
    request was sent to (app.public_url), so every link a client gets is absolute."""
    settings: Settings = request.app.state.settings
    base_url = request_base_url(request, settings)
    return ArtifactLinks(
        storage=request.app.state.storage,
        ttl=settings.artifact_url_ttl,
        base_url=base_url + "/",
        public_url=base_url,
    )


async def get_artifact_links(request: Request) -> ArtifactLinks:
    return artifact_links(request)


ArtifactLinksDep = Annotated[ArtifactLinks, Depends(get_artifact_links)]
