"""The service as real subprocesses: a `leap worker` (Celery) and a `leap api` on a free port."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from app.settings import Settings

from .helpers import REPO_ROOT, free_port, settings_env, wait_for


class WorkerProcess:
    """A real `leap worker` subprocess."""

    def __init__(
        self,
        settings: Settings,
        *,
        queues: str,
        extra_env: dict[str, str] | None = None,
        pool: str = "prefork",
        beat: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = (log_dir or Path(settings.data_dir)) / f"worker-{secrets.token_hex(3)}.log"
        # One torch thread: on a busy 2-core machine torch's default (a thread per core) spins against
        # the neighbours and leap-tiny trains ~25x slower (0.5 instead of 13 steps/s, measured).
        env = settings_env(settings) | {"OMP_NUM_THREADS": "1"} | (extra_env or {})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--queues",
                queues,
                "--pool",
                pool,
                "--loglevel",
                "info",
                *(["--beat"] if beat else []),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: b"ready." in self.log_path.read_bytes() or self.process.poll() is not None,
            timeout=60,
            message="worker start",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class ApiProcess:
    """A real `leap api` subprocess on a free port, for clients that talk HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = Path(settings.data_dir) / f"api-{secrets.token_hex(3)}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", self.url.rsplit(":", 1)[1]],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return self.process.poll() is not None

        wait_for(ready, timeout=60, message="leap api")
        if self.process.poll() is not None:
            raise RuntimeError(f"leap api exited: {self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
