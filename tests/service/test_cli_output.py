"""What the `leap` command prints: a help that names both kinds of model, and a `leap serve` that is
quiet through a whole training (the key and the address, no banners, no library notices)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

from app.tenants.local_key import read_local_key

from .factories import image_files
from .helpers import REPO_ROOT, free_port, wait_for


def leap(*args: str) -> str:
    """The command's output, its whitespace (rich wraps help text) made single spaces."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.replace("│", " ").split())


def test_help_names_image_and_language_models_and_serve_offers_data_dir_and_verbose():
    top = leap("--help")
    assert "language models" in top and "Stable Diffusion" in top, top
    serve = leap("serve", "--help")
    assert "--data-dir" in serve and "--verbose" in serve and "-v" in serve, serve


def test_serve_is_quiet_through_a_training(tmp_path):  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return process.poll() is not None

        wait_for(ready, timeout=90, interval=0.5, message="leap serve")
        key = read_local_key(data_dir)  # --data-dir is where everything went
        assert key, log_path.read_text()
        headers = {"Authorization": f"Bearer {key}"}
        files = [(name, (filename, data, kind)) for name, (filename, data, kind) in image_files(2)]
        response = httpx.post(f"{url}/v1/trainings", files=files, data={"steps": "2"}, headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        training_url = response.json()["urls"]["get"]

        def finished() -> bool:
            return httpx.get(training_url, headers=headers, timeout=5).json()["status"] in ("succeeded", "failed")

        wait_for(finished, timeout=180, interval=0.5, message="the training")
        assert httpx.get(training_url, headers=headers, timeout=5).json()["status"] == "succeeded"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    output = log_path.read_text()
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("API key (tenant 'local'): leap_live_") and str(data_dir) in lines[0], output
    assert lines[1] == f"LEAP listening on http://127.0.0.1:{port}", output
    for noise in ("-------------- ", "SecurityWarning", "superuser", "torchvision", "Loading weights", "WARNING/"):
        assert noise not in output, (noise, output)
    assert len(lines) <= 4, output  # at most celery's one-line goodbye of each worker on the way out
