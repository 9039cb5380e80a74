"""SSE load phase: many concurrent GET /v1/trainings/{id}/stream, each checked for every progress event.

    nice -n 10 .venv/bin/python bench/sse_phase.py [--streams 200] [--seconds 60] [--api-workers 2]

Standalone it starts its own `leap api` (2 uvicorn workers) on a throwaway Postgres database with
Redis for the broker and the live events, as bench/load.py does. `run_sse_phase()` runs against
an API that is already up (bench/load.py can call it with its own API and settings).

What the phase does:
1. inserts `streams` queued trainings straight into the database (the per-tenant limit of queued
   and running trainings only guards submissions), owned by the tenant of `api_key`, or by new
   tenants of 20 trainings each when no key is given;
2. opens one SSE stream per training and waits for every stream's first `status` event;
3. acts as the worker through the worker's own code: `lifecycle.claim`, then `updates` progress
   writes per training spread over `seconds` through workers.trainings.Heartbeat (report + beat:
   the lease renewal, progress UPDATE, log line and the publish after commit), then
   `lifecycle.complete` (whose final progress write is one more event);
4. waits for every stream to end after its final status, and compares what each stream received
   with what was published: `updates + 1` progress events per training, in order.

Returns a dict:
    streams, streams_opened, streams_completed (ended after their final status)
    progress_published, progress_received, missed_events, duplicate_events
    log_events_received, status_events_received
    errors (count), error_samples (up to 10 messages)
    latency_ms {p50, p99, max}: from the progress write (its `at`) to its receipt by the client
    open_seconds (all streams open and snapshot received), drive_seconds, seconds (whole phase)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import Database, create_database, unit_of_work  # noqa: E402
from app.orm.base import utcnow  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.storage import make_storage  # noqa: E402
from app.tenants import service as tenants  # noqa: E402
from app.trainings import lifecycle, repository  # noqa: E402
from bench.scratch import own_redis, work_dir, write_results  # noqa: E402
from models.registry import load_registry  # noqa: E402
from models.trainer.config import Progress  # noqa: E402
from workers.runtime import WorkerRuntime  # noqa: E402
from workers.trainings import Heartbeat  # noqa: E402

TRAININGS_PER_TENANT = 20
FINISHED = {"succeeded", "failed", "canceled"}


@dataclass
class StreamResult:
    training_id: str
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    steps: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    logs: int = 0
    statuses: list[str] = field(default_factory=list)
    completed: bool = False
    error: str | None = None


def _owners(database: Database, api_key: str | None, count: int) -> list[tuple[uuid.UUID, str]]:
    """(tenant id, API key) per training: the key's tenant for all, or new tenants of 20 each."""
    with unit_of_work(database.session_factory) as session:
        if api_key is not None:
            principal = tenants.authenticate(session, authorization=f"Bearer {api_key}")
            return [(principal.tenant_id, api_key)] * count
        owners = []
        for index in range(math.ceil(count / TRAININGS_PER_TENANT)):
            tenant = tenants.create_tenant(session, name=f"sse-bench-{index}")
            _, key = tenants.create_api_key(session, tenant_id=tenant.id, name="sse-bench")
            owners += [(tenant.id, key)] * TRAININGS_PER_TENANT
        return owners[:count]


def _insert_trainings(database: Database, owners: list[tuple[uuid.UUID, str]], steps: int) -> list[str]:
    ids = []
    with unit_of_work(database.session_factory) as session:
        for tenant_id, _ in owners:
            training_id = uuid.uuid4()
            repository.insert_training(
                session,
                {
                    "id": training_id,
                    "tenant_id": tenant_id,
                    "status": "queued",
                    "request_fingerprint": secrets.token_hex(32),
                    "base_model": "leap-tiny",
                    "kind": "image",
                    "mode": "pivotal",
                    "init": "token",
                    "token": f"<leap-{training_id.hex[:8]}>",
                    "parameters": {"steps": steps},
                    "metadata_": {"bench": "sse"},
                    "inputs": [],
                    "skipped_files": [],
                    "image_count": 0,
                    "progress_step": 0,
                    "attempts": 0,
                    "created_at": utcnow(),
                },
            )
            ids.append(str(training_id))
    return ids


async def _read_stream(client: httpx.AsyncClient, result: StreamResult, key: str) -> None:
    """Parse one stream until the server ends it; record progress steps and their latency."""
    headers = {"Authorization": f"Bearer {key}"}
    event, data = "message", ""
    try:
        async with client.stream("GET", f"/v1/trainings/{result.training_id}/stream", headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "" and data:
                    received = time.time()
                    body = json.loads(data)
                    if event == "status":
                        result.statuses.append(body["status"])
                        result.opened.set()
                        if body["status"] in FINISHED:
                            result.completed = True
                    elif event == "progress":
                        result.steps.append(int(body["step"]))
                        written = datetime.fromisoformat(body["at"]).timestamp()
                        result.latencies_ms.append((received - written) * 1000)
                    elif event == "log":
                        result.logs += 1
                    event, data = "message", ""
    except (httpx.HTTPError, ValueError, KeyError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.opened.set()  # a failed stream must not hold the phase up


class FakeWorker:
    """Runs the worker's own transitions for many trainings from a few threads."""

    def __init__(self, settings: Settings, database: Database, threads: int = 4) -> None:
        self.runtime = WorkerRuntime(
            settings=settings,
            database=database,
            storage=make_storage(settings),
            registry=load_registry(settings.model_registry),
            send=lambda *args, **options: None,
            worker_id=f"sse-bench:{os.getpid()}",
        )
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fake-worker")
        self.heartbeats: dict[str, Heartbeat] = {}

    def claim(self, training_id: str) -> None:
        with self.runtime.unit_of_work() as session:
            claimed = lifecycle.claim(
                session,
                training_id=uuid.UUID(training_id),
                worker_id=self.runtime.worker_id,
                settings=self.runtime.settings,
            )
        if claimed is None:
            raise RuntimeError(f"could not claim {training_id}")
        self.heartbeats[training_id] = Heartbeat(self.runtime, claimed.id)

    def progress(self, training_id: str, step: int, total: int) -> None:
        heartbeat = self.heartbeats[training_id]
        heartbeat.report(Progress(step=step, total=total, loss=1.0 / step, eta_s=float(total - step)))
        heartbeat.beat()
        if heartbeat.lost.is_set():
            raise RuntimeError(f"lease of {training_id} lost")

    def complete(self, training_id: str, steps: int) -> None:
        with self.runtime.unit_of_work() as session:
            done = lifecycle.complete(
                session,
                training_id=uuid.UUID(training_id),
                worker_id=self.runtime.worker_id,
                artifacts=[],
                usage=lifecycle.UsageRecord(steps=steps, compute_seconds=1.0, device="bench"),
                settings=self.runtime.settings,
                init_used="token",
                stop_reason="steps",
            )
        if not done:
            raise RuntimeError(f"could not complete {training_id}")

    async def each(self, method: Any, ids: list[str], *args: Any) -> list[BaseException]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self.pool, method, training_id, *args) for training_id in ids),
            return_exceptions=True,
        )
        return [item for item in results if isinstance(item, BaseException)]


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


async def run_sse_phase(
    *,
    api_url: str,
    settings: Settings,
    api_key: str | None = None,
    streams: int = 200,
    seconds: float = 60.0,
    updates: int = 20,
) -> dict[str, Any]:
    """Hold `streams` SSE streams open for about `seconds` while `updates` progress writes per training
    are published through the worker's code; see the module docstring for the returned figures."""
    started = time.perf_counter()
    database = create_database(settings)
    worker = FakeWorker(settings, database)
    errors: list[str] = []
    try:
        owners = await asyncio.to_thread(_owners, database, api_key, streams)
        ids = await asyncio.to_thread(_insert_trainings, database, owners, updates)
        results = [StreamResult(training_id) for training_id in ids]
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
        timeout = httpx.Timeout(connect=30, read=max(seconds, 60), write=30, pool=60)
        async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=timeout) as client:
            readers = [
                asyncio.create_task(_read_stream(client, result, key))
                for result, (_, key) in zip(results, owners, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(result.opened.wait() for result in results)), timeout=120)
            open_seconds = time.perf_counter() - started

            drive_started = time.perf_counter()
            errors += [repr(error) for error in await worker.each(worker.claim, ids)]
            pause = seconds / updates
            for step in range(1, updates + 1):
                round_started = time.perf_counter()
                errors += [repr(error) for error in await worker.each(worker.progress, ids, step, updates)]
                await asyncio.sleep(max(0.0, pause - (time.perf_counter() - round_started)))
            errors += [repr(error) for error in await worker.each(worker.complete, ids, updates)]
            drive_seconds = time.perf_counter() - drive_started
            done, pending = await asyncio.wait(readers, timeout=60)
            for task in pending:
                task.cancel()
    finally:
        worker.pool.shutdown(wait=True)
        database.dispose()

    expected = list(range(1, updates + 1)) + [updates]  # the completion's final progress write
    missed = duplicates = 0
    for result in results:
        if result.error:
            errors.append(f"{result.training_id}: {result.error}")
        elif not result.completed:
            errors.append(f"{result.training_id}: stream did not end after a final status")
        missed += sum(max(0, expected.count(step) - result.steps.count(step)) for step in set(expected))
        duplicates += sum(max(0, result.steps.count(step) - expected.count(step)) for step in set(result.steps))
    latencies = sorted(value for result in results for value in result.latencies_ms)
    return {
        "streams": streams,
        "streams_opened": sum(1 for result in results if result.statuses),
        "streams_completed": sum(1 for result in results if result.completed),
        "progress_published": len(expected) * streams,
        "progress_received": sum(len(result.steps) for result in results),
        "missed_events": missed,
        "duplicate_events": duplicates,
        "log_events_received": sum(result.logs for result in results),
        "status_events_received": sum(len(result.statuses) for result in results),
        "errors": len(errors),
        "error_samples": errors[:10],
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1) if latencies else 0.0,
            "p99": round(_percentile(latencies, 0.99), 1),
            "max": round(latencies[-1], 1) if latencies else 0.0,
        },
        "open_seconds": round(open_seconds, 2),
        "drive_seconds": round(drive_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


# --- standalone: start an API as bench/load.py does -------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the uvicorn workers), in MB."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def main() -> int:
    import psycopg

    from app.db import upgrade_database

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--updates", type=int, default=20, help="progress writes per training")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default=None, help="an empty Redis DB to use (default: a private redis-server)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: print only)")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    name = f"leap_sse_{secrets.token_hex(4)}"
    with psycopg.connect(args.pg_admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    scratch = contextlib.ExitStack()
    args.redis = scratch.enter_context(own_redis(args.redis))
    workdir = scratch.enter_context(work_dir("leap-sse-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")} | {
        "LEAP_DATABASE_URL": database_url,
        "LEAP_BROKER_URL": args.redis,
        "LEAP_STORAGE_URL": f"file://{workdir / 'files'}",
        "LEAP_DATA_DIR": str(workdir),
    }
    settings = Settings(
        database_url=database_url,
        broker_url=args.redis,
        storage_url=f"file://{workdir / 'files'}",
        data_dir=workdir,
        database_pool_size=5,
    )
    upgrade_database(settings)
    port = _free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers", str(args.api_workers)],
        cwd=ROOT,
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    peak_rss = 0.0
    stop = threading.Event()

    def sample_rss() -> None:
        nonlocal peak_rss
        while not stop.wait(0.5):
            peak_rss = max(peak_rss, _rss_mb(api.pid))

    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        result = asyncio.run(
            run_sse_phase(
                api_url=base_url, settings=settings, streams=args.streams, seconds=args.seconds, updates=args.updates
            )
        )
        stop.set()
        sampler.join()
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
        with psycopg.connect(args.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        scratch.close()  # the private Redis and the work folder

    result["api_peak_rss_mb"] = round(peak_rss, 1)
    result["config"] = {
        "streams": args.streams,
        "seconds": args.seconds,
        "updates_per_training": args.updates,
        "api_workers": args.api_workers,
        "cpus": os.cpu_count(),
        "load_average_1m_start": load_start,
        "load_average_1m_end": round(os.getloadavg()[0], 2),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    write_results(args.json, result)
    ok = result["errors"] == 0 and result["missed_events"] == 0 and result["streams_completed"] == args.streams
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
