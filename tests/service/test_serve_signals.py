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


def start_serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], set[int]]:
    """`leap serve` on the embedded default in `data_dir`, once its workers, pool and beat are up."""
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
    return process, descendants(process.pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_everything_it_started_on_a_signal(tmp_path, signum):
    process, started = start_serve(tmp_path)
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
    process, started = start_serve(tmp_path)
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
