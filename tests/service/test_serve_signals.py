"""`leap serve` as a real process: SIGTERM and SIGINT stop everything it started (the API, the
training worker and its pool, the sweeper and its beat), and so does its own death (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.tenants.local_key import read_local_key

from .factories import image_files
from .helpers import REPO_ROOT, alive, free_port, pool_children, wait_for


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in pool_children(pending.pop()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def start_serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], set[int], str]:
    """`leap serve` on the embedded default in `data_dir`, once its workers, pool and beat are up:
    the process, its descendants and its URL."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
    env |= {"LEAP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    log = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if process.poll() is not None:
            return True
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
        # The training worker with its pool process, the sweeper with its beat.
        return up and len(descendants(process.pid)) >= 4

    wait_for(ready, timeout=90, interval=0.5, message="leap serve and its workers")
    assert process.poll() is None, (data_dir / "serve.log").read_text()
    return process, descendants(process.pid), f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_everything_it_started_on_a_signal(tmp_path, signum):
    process, started, _ = start_serve(tmp_path)
    try:
        process.send_signal(signum)
        process.wait(timeout=60)
        wait_for(
            lambda: not [pid for pid in started if alive(pid)],
            timeout=30,
            message=f"every process of leap serve to exit (left: {[pid for pid in started if alive(pid)]})",
        )
    finally:
        for pid in [process.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_serve_killed_hard_takes_its_workers_along(tmp_path):
    process, started, _ = start_serve(tmp_path)
    try:
        process.kill()
        process.wait(timeout=10)
        wait_for(
            lambda: not [pid for pid in started if alive(pid)],
            timeout=40,
            message=f"the workers of a killed leap serve to exit (left: {[pid for pid in started if alive(pid)]})",
        )
    finally:
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_serve_killed_hard_mid_training_takes_the_training_along(tmp_path):
    # SIGTERM alone (the kernel's parent-death signal) makes Celery finish the task first: this
    # training would run for minutes with no API. The workers' own watch kills them and their pool.
    process, started, url = start_serve(tmp_path)
    pool = set(started)
    headers = {"Authorization": f"Bearer {read_local_key(tmp_path)}"}
    try:
        response = httpx.post(
            f"{url}/v1/trainings", files=image_files(2), data={"steps": "5000"}, headers=headers, timeout=30
        )
        assert response.status_code == 202, response.text
        training = f"{url}/v1/trainings/{response.json()['id']}"

        def training_steps() -> bool:
            body = httpx.get(training, headers=headers, timeout=5).json()
            return body["status"] == "running" and (body.get("progress") or {}).get("step", 0) > 0

        wait_for(training_steps, timeout=90, interval=0.5, message="the training to run")
        pool |= descendants(process.pid)
        process.kill()
        process.wait(timeout=10)
        wait_for(
            lambda: not [pid for pid in pool if alive(pid)],
            timeout=15,
            message=f"the training's processes to exit (left: {[pid for pid in pool if alive(pid)]})",
        )
    finally:
        for pid in pool:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
