"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app import __version__
from app.main import create_app

from .factories import make_tenant, submit


def test_healthz_answers_with_the_version(client):
    response = client.get("/healthz")
    assert response.json() == {"status": "ok", "version": __version__}
    assert response.headers["X-LEAP-Version"] == __version__


def test_every_answer_carries_the_version_header(client):
    # Errors and preflights too: a client reporting a problem can always say which server answered.
    assert client.get("/v1/trainings").headers["X-LEAP-Version"] == __version__  # 401
    assert client.get("/v1/no-such-path").headers["X-LEAP-Version"] == __version__  # 404
    assert client.options("/v1/trainings").headers["X-LEAP-Version"] == __version__  # 204


def test_readyz_checks_database_broker_and_storage(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_is_unavailable_when_a_dependency_is_down(settings):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "storage_url": "s3://no-such-bucket"})
    with TestClient(create_app(broken)) as down:
        response = down.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["broker"].startswith("error") and checks["storage"].startswith("error")


def _sample(text: str, name: str) -> float:
    line = next((line for line in text.splitlines() if line.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_report_trainings_queue_and_latency(client, database):
    posts = 'leap_http_request_duration_seconds_count{method="POST",route="/v1/trainings",status="202"}'
    before = _sample(client.get("/metrics").text, posts)
    tenant = make_tenant(database)
    submit(client, tenant)
    submit(client, tenant)
    text = client.get("/metrics").text
    assert 'leap_trainings{status="queued"} 2.0' in text
    assert "leap_queue_depth 2.0" in text
    assert "leap_training_compute_seconds_bucket" in text
    assert "leap_training_queue_wait_seconds_count" in text
    assert "leap_training_steps_per_second" in text
    assert _sample(text, posts) == before + 2
