"""What a benchmark may touch: a Redis of its own, a work folder it deletes, results only where told.

    with own_redis(args.redis) as redis_url, work_dir("leap-bench-") as workdir: ...

Without --redis a private redis-server runs on a free port, its data in a temporary folder, and
stops with the benchmark. A --redis URL given is used only if its database is empty (nothing in it
to lose); it is never flushed: the keys the service wrote there expire or stay for the owner."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_redis(url: str | None) -> Iterator[str]:
    """A Redis URL the benchmark may fill: a private server (url None) or `url` if its DB is empty."""
    if url is not None:
        keys = redis.Redis.from_url(url).dbsize()
        if keys:
            raise SystemExit(f"refusing {url}: its database holds {keys} keys (give an empty one, or no --redis)")
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="leap-bench-redis-"))
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    private = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis.from_url(private).ping():
                    break
            time.sleep(0.05)
        yield private
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for the run, deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_results(path: Path | None, result: dict[str, Any]) -> None:
    """Write the JSON only when --json names a file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def timed_training(
    url: str, headers: dict[str, str], files: list, data: dict[str, str]
) -> tuple[dict[str, Any], float]:
    """POST a training to the API at `url`, then poll it every 100 ms until it has finished: its last
    body and the seconds from the POST to then."""
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/trainings", files=files, data=data, headers=headers, timeout=60)
    response.raise_for_status()
    training_id = response.json()["id"]
    while True:
        polled = httpx.get(f"{url}/v1/trainings/{training_id}", headers=headers, timeout=10)
        body = polled.json()
        if polled.status_code == 200 and body["status"] in ("succeeded", "failed", "canceled"):
            return body, time.perf_counter() - started
        time.sleep(0.1 if polled.status_code == 200 else 0.5)  # 429: the per-key rate limit


def concept_files(split: str = "val") -> list[tuple[str, tuple[str, bytes, str]]]:
    """The first benchmark concept of `split`, its views as PNG parts of a multipart submission."""
    import io

    from models.reference.concepts import benchmark_concepts

    files = []
    for index, image in enumerate(benchmark_concepts(split)[0].views()):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append(("images", (f"{index}.png", buffer.getvalue(), "image/png")))
    return files


@contextlib.contextmanager
def embedded_serve(prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """`leap serve` (SQLite, local files, filesystem broker, one torch thread, offline) in a work folder
    deleted afterwards: its URL and the local tenant's auth headers."""
    repo = Path(__file__).resolve().parents[1]
    with work_dir(prefix) as data_dir:
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
        # Offline: the registry's text model is not fetched from the hub while the worker preloads.
        env |= {"LEAP_DATA_DIR": str(data_dir), "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with (data_dir / "serve.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                cwd=repo,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(url)
                yield url, {"Authorization": f"Bearer {(data_dir / 'api-key').read_text().strip()}"}
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


def _wait_ready(url: str) -> None:
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("leap serve did not become ready")
