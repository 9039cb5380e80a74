"""LEAP_PRELOAD_MODELS: a training worker loads every registered base model (image and text) when
its process starts."""

from __future__ import annotations

from pathlib import Path

from .factories import image_files, make_tenant
from .helpers import pool_children, wait_for, wait_status
from .processes import WorkerProcess
from .text_models import write_registry_with_tiny_llama


def test_worker_loads_the_registered_models_before_its_first_training(client, database, settings, tmp_path):
    # leap-tiny and a tiny text model (the bundled SmolLM2 would add a GGUF conversion to this test).
    registry = write_registry_with_tiny_llama(tmp_path, keep=("leap-tiny",))
    worker = WorkerProcess(
        settings.model_copy(update={"model_registry": registry}),
        queues=settings.queue,
        extra_env={"LEAP_PRELOAD_MODELS": "1"},
    )
    try:
        wait_for(
            lambda: all(f"preloaded base model {name} on cpu" in worker.log() for name in ("leap-tiny", "tiny-llama")),
            timeout=120,
            message="the pool process to preload leap-tiny and tiny-llama",
        )
        (child,) = pool_children(worker.process.pid)
        assert "libtorch" in Path(f"/proc/{child}/maps").read_text()  # loaded before any task was sent
        assert "could not preload" not in worker.log()

        tenant = make_tenant(database)
        response = client.post("/v1/trainings", files=image_files(2), data={"steps": "2"}, headers=tenant.headers)
        body = wait_status(client, tenant, response.json()["id"], {"succeeded", "failed"}, timeout=120)
        assert body["status"] == "succeeded", body
        assert pool_children(worker.process.pid) == [child]  # the same, preloaded process trained
    finally:
        worker.stop()
