"""create_app(): settings, database, storage, registry, Celery sender, routers, middleware, errors.

The API process never imports torch or diffusers: only torch-free modules of the ML core.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.admin.routes import router as admin_router
from app.base_models.routes import router as base_models_router
from app.db import create_database
from app.errors import install_error_handlers
from app.health.metrics import HttpMetricsMiddleware, TrainingCollector
from app.health.routes import router as health_router
from app.memory import release_large_buffers
from app.openapi_strict import strict_parameters
from app.options import OptionsMiddleware
from app.outbox.sender import bind_sender
from app.settings import Settings, get_settings
from app.storage import make_storage
from app.storage.routes import router as files_router
from app.tenants.auth import make_key_cache
from app.tenants.rate_limit import make_rate_limiter
from app.trainings.download_slots import make_download_slots
from app.trainings.routes import router as trainings_router
from app.trainings.stream import make_event_hub
from app.usage.routes import router as usage_router
from app.version import install_version
from app.webhooks.routes import router as webhooks_router
from models.registry import load_registry
from workers.celery_app import create_celery, make_sender, queue_depth

API_VERSION = "1.0.0"
DESCRIPTION = (
    "LEAP fine-tunes Stable Diffusion on a few images: booster-initialised pivotal tuning "
    "(textual inversion + LoRA). Submit images, poll the training, download the artifacts. "
    'Errors are `{"error": {"code", "message", "details"}}`.'
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    release_large_buffers()  # uploads pass through tens of MB at a time; idle memory must come back
    database = create_database(settings)
    storage = make_storage(settings)
    registry = load_registry(settings.model_registry)
    celery = create_celery(settings)
    bind_sender(database.session_factory, make_sender(celery))
    event_hub = make_event_hub(settings, database.session_factory)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await event_hub.stop()
        await app.state.rate_limiter.close_on_loop()
        if database.loop_reads is not None:
            await database.loop_reads.close()
        database.dispose()

    app = FastAPI(title="LEAP", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan)
    generated_openapi = app.openapi
    app.openapi = lambda: strict_parameters(generated_openapi())  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.database = database
    app.state.storage = storage
    app.state.registry = registry
    app.state.celery = celery
    app.state.event_hub = event_hub
    app.state.stream_open_slots = asyncio.Semaphore(max(1, settings.database_pool_size // 2))
    app.state.rate_limiter = make_rate_limiter(settings)
    app.state.download_slots = make_download_slots(settings)
    app.state.verified_keys = make_key_cache(settings, app.state.rate_limiter)

    metrics_registry = CollectorRegistry()
    metrics_registry.register(TrainingCollector(database.session_factory, lambda: queue_depth(celery, settings.queue)))
    app.state.metrics_registry = metrics_registry
    app.add_middleware(OptionsMiddleware)
    app.add_middleware(HttpMetricsMiddleware, registry=metrics_registry)
    install_version(app)

    install_error_handlers(app)
    app.include_router(trainings_router)
    app.include_router(base_models_router)
    app.include_router(files_router)
    app.include_router(health_router)
    app.include_router(usage_router)
    app.include_router(webhooks_router)
    app.include_router(admin_router)
    return app
