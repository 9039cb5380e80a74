"""The embedded default: `leap serve` with no configuration runs on SQLite, local files and a
filesystem broker, through the same Celery task path, and serves artifacts by signed URLs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import httpx
import pytest

from app.db import create_database, unit_of_work
from app.settings import Settings
from app.storage import make_storage
from app.storage.local import LocalStorage
from app.trainings import lifecycle

from .factories import image_files
from .helpers import REPO_ROOT, free_port, wait_for


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
    # No database, broker or storage settings: only where to keep the data. The trainer is the real
    # one, on one torch thread (see WorkerProcess: a busy 2-core machine slows more threads ~25x).
    env |= {"LEAP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_for(ready, timeout=60, message="leap serve")
        assert process.poll() is None, (data_dir / "serve.log").read_text()
        key = (data_dir / "api-key").read_text().strip()
        yield base_url, {"Authorization": f"Bearer {key}"}, data_dir
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_embedded_default_trains_and_serves_artifacts_by_signed_url(embedded):
    base_url, headers, data_dir = embedded
    assert (data_dir / "leap.db").is_file()
    submitted = time.monotonic()
    response = httpx.post(f"{base_url}/v1/trainings", files=image_files(3), data={"steps": "10"}, headers=headers)
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]

    def finished():
        body = httpx.get(f"{base_url}/v1/trainings/{training_id}", headers=headers).json()
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_for(finished, timeout=30, message="the embedded worker to finish")
    assert body["status"] == "succeeded", body
    assert time.monotonic() - submitted < 15
    for artifact in body["artifacts"]:
        assert artifact["url"].startswith(f"{base_url}/v1/files/trainings/{training_id}/artifacts/")
        download = httpx.get(artifact["url"])
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == artifact["sha256"]
        assert download.headers["content-disposition"].startswith("attachment;")

    tampered = body["artifacts"][0]["url"].replace("signature=", "signature=0")
    assert httpx.get(tampered).status_code == 403
    settings = Settings(data_dir=data_dir)
    storage = LocalStorage(data_dir / "files", secret=settings.signing_secret.get_secret_value())
    expired = storage.presign_get(
        f"trainings/{training_id}/artifacts/manifest.json",
        filename="manifest.json",
        expires_in=timedelta(seconds=-1),
        base_url=base_url,
    )
    error = httpx.get(expired)
    assert error.status_code == 403 and error.json()["error"]["code"] == "link_invalid"


def test_embedded_claim_happens_within_a_second(embedded):
    base_url, headers, _ = embedded
    response = httpx.post(f"{base_url}/v1/trainings", files=image_files(2), data={"steps": "3"}, headers=headers)
    training_id = response.json()["id"]

    def claimed():
        body = httpx.get(f"{base_url}/v1/trainings/{training_id}", headers=headers).json()
        return body if body["started_at"] else None

    body = wait_for(claimed, timeout=10, interval=0.05, message="claim")
    wait = datetime.fromisoformat(body["started_at"]) - datetime.fromisoformat(body["created_at"])
    assert wait.total_seconds() < 1.0, wait


def test_embedded_metrics_read_sqlite_and_the_filesystem_queue(embedded):
    base_url, _, _ = embedded
    text = httpx.get(f"{base_url}/metrics").text
    assert 'leap_trainings{status="succeeded"}' in text
    assert "leap_queue_depth 0.0" in text


def test_sweeper_runs_on_sqlite(embedded):
    _, _, data_dir = embedded
    settings = Settings(data_dir=data_dir)
    database = create_database(settings)
    try:
        with unit_of_work(database.session_factory) as session:
            report = lifecycle.sweep(
                session, settings=settings, storage=make_storage(settings), send=lambda *args, **options: None
            )
        assert report.failed == [] and report.requeued == []
    finally:
        database.dispose()
