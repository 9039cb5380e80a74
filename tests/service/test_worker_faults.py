"""Failures that cannot be produced for real on a test machine (GPU out of memory, an unexpected
bug) injected into the real trainer by fault_injection.py: each gets a typed error code and
leaves no artifacts."""

from __future__ import annotations

import pytest

from .factories import make_tenant, submit
from .helpers import stored_keys, wait_status
from .processes import WorkerProcess


@pytest.fixture(scope="module")
def faulty_worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(
        settings.model_copy(update={"trainer": "tests.service.fault_injection:train"}), queues=settings.queue
    )
    yield worker
    worker.stop()


@pytest.mark.parametrize(
    ("token", "code", "mention"),
    [("<oom>", "out_of_memory", "out of GPU memory"), ("<crash>", "internal", "RuntimeError")],
)
def test_failures_get_a_typed_error_code_and_no_artifacts(
    client, database, settings, faulty_worker, token, code, mention
):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "5", "token": token}).json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "failed", (body, faulty_worker.log()[-3000:])
    assert body["error"]["code"] == code and mention in body["error"]["message"]
    assert body["usage"]["steps"] == 1  # the fault came after the first real step
    assert body["artifacts"] == []
    assert not [key for key in stored_keys(settings) if "/artifacts/" in key]
