"""Load benchmark of the Postgres-backed API on one machine: status polls/s and submissions/s.

    .venv/bin/python bench/load.py [--duration 15] [--concurrency 16] [--api-workers 2] [--sse-streams 200]
        [--overhead 0]

Starts its own API (`leap api`, default settings) on a throwaway Postgres database with a private Redis as
the broker and local-disk storage. As an operator would, it creates the bench tenant through the
admin API with a raised concurrent-trainings limit (submissions stay queued: no worker runs) and
--keys API keys; each request takes the next key, so the default per-key rate limit (600/min)
is never reached. Then it runs three phases: GET /v1/trainings/{id} polls, POST /v1/trainings
with 4 small PNGs each, and a mix (90% polls, 8% lists, 2% submissions). GETs go over plain
keep-alive asyncio connections (httpx costs the client over 1 ms of CPU a request, taken from the
cores the API runs on), POSTs through httpx. For each phase it reports req/s, p50/p99/max
latency, errors (by status), the API's CPU per request (utime+stime of the uvicorn supervisor and
workers from /proc/<pid>/stat, delta over the phase / requests) and cores used, the bench
client's own CPU per request, the machine's idle CPU during the phase and its 1-minute load
average at the end. Prints a table and, with --json PATH, writes JSON, also with the peak RSS of the API
processes.
Targets (2 cores): polls <= 1.0 ms API CPU each, >= 500/s with p99 < 100 ms;
>= 50 submissions/s with p99 < 500 ms; zero errors; API RSS <= 300 MB.

Then (unless --sse-streams 0) bench/sse_phase.py's phase on the same API: --sse-streams (200)
GET /v1/trainings/{id}/stream streams held open --sse-seconds (60) while a fake worker publishes
progress through the worker's own code; it reports streams opened and ended, progress events
received against published (missed, duplicated), errors, publish-to-receipt latency and the API's
CPU over the phase. Target: 200 streams for a minute, no errors, every progress event received.

Then (unless --overhead 0) it measures the overhead around training on the embedded default
(`leap serve`, SQLite, filesystem broker, local files; real trainer, leap-tiny, a few steps):
upload -> 202 (POST latency), queued -> claimed (started_at - created_at) and the worker's time
outside the training function, an upper bound of finished -> artifacts listed (finished_at -
started_at - compute_seconds: fetching inputs, uploading artifacts, recording). Target < 1 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import upgrade_database  # noqa: E402
from app.settings import DEV_ADMIN_TOKEN, Settings  # noqa: E402
from bench.scratch import own_redis, work_dir, write_results  # noqa: E402


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    api_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    machine_idle: float = 0.0
    load_average_1m: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms) or [0.0]
        return {
            "phase": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "per_second": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2),
            "api_cpu_ms_per_request": round(1000 * self.api_cpu_seconds / self.requests, 3) if self.requests else 0.0,
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_seconds / self.requests, 3)
            if self.requests
            else 0.0,
            "api_cores": round(self.api_cpu_seconds / self.seconds, 2) if self.seconds else 0.0,
            "machine_idle_percent": round(100 * self.machine_idle, 1),
            "load_average_1m": round(self.load_average_1m, 2),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png(seed: int) -> bytes:
    image = Image.new("RGB", (64, 64), (seed * 37 % 256, seed * 91 % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def process_tree_rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of a process and its children (the uvicorn workers): total and largest, in MB."""
    total = largest = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            total, largest = total + rss, max(largest, rss)
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024, largest / 1024


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (uvicorn's supervisor and its workers)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
        found.append(current)
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def machine_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values[:8])


class RawConnection:
    """One keep-alive HTTP/1.1 connection for GETs: a few lines of asyncio instead of httpx, whose
    client work per request (over 1 ms of CPU) would otherwise take the cores the API is measured
    on. Reconnects after an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{lines}\r\n".encode())
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1]) for line in header_lines if line.lower().startswith("content-length:")
            )
            return int(status_line.split()[1]), await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Status:
    """What a request gave: an httpx response or a RawConnection's (status, body)."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


async def run_phase(name: str, make_request, duration: float, concurrency: int, api_pids: list[int]) -> Phase:  # type: ignore[no-untyped-def]
    """`concurrency` users each send make_request(connection) back to back for `duration` seconds."""
    phase = Phase(name)
    deadline = time.perf_counter() + duration
    host, port = BASE_ADDRESS

    async def user() -> None:
        connection = RawConnection(host, port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await make_request(connection)
                status = str(response.status_code)
                ok = response.status_code < 400
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, StopIteration, ValueError) as error:
                status, ok = type(error).__name__, False
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)
            phase.requests += 1
            phase.errors += 0 if ok else 1
            phase.statuses[status] = phase.statuses.get(status, 0) + 1

        connection.close()

    cpu_before, (idle_before, total_before) = cpu_seconds(api_pids), machine_times()
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    idle_after, total_after = machine_times()
    phase.api_cpu_seconds = cpu_seconds(api_pids) - cpu_before
    phase.client_cpu_seconds = time.process_time() - client_before
    phase.machine_idle = (idle_after - idle_before) / max(1, total_after - total_before)
    phase.load_average_1m = os.getloadavg()[0]
    return phase


BASE_ADDRESS = ("127.0.0.1", 0)
ADMIN_HEADERS = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}


async def create_bench_tenant(client: httpx.AsyncClient, keys: int) -> list[str]:
    """The bench tenant, through the admin API as an operator would: queued trainings are never
    worked off here, so its concurrent-trainings limit is raised; `keys` keys share its traffic."""
    response = await client.post(
        "/v1/admin/tenants", json={"name": "load bench", "max_concurrent_trainings": 1_000_000}, headers=ADMIN_HEADERS
    )
    response.raise_for_status()
    tenant_id = response.json()["id"]
    created = []
    for index in range(keys):
        response = await client.post(
            f"/v1/admin/tenants/{tenant_id}/keys", json={"name": f"bench {index}"}, headers=ADMIN_HEADERS
        )
        response.raise_for_status()
        created.append(response.json()["key"])
    return created


async def benchmark(base_url: str, args: argparse.Namespace, api_pids: list[int]) -> list[Phase]:
    global BASE_ADDRESS
    BASE_ADDRESS = ("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
    images = [png(seed) for seed in range(args.images)]
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(images)]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        keys = itertools.cycle(
            [{"Authorization": f"Bearer {key}"} for key in await create_bench_tenant(client, args.keys)]
        )

        async def poll(connection: RawConnection) -> Status:
            status, _ = await connection.get(f"/v1/trainings/{random.choice(ids)}", next(keys))
            return Status(status)

        async def submit(_: RawConnection | None = None) -> httpx.Response:
            return await client.post("/v1/trainings", files=files, headers=next(keys))

        async def list_page(connection: RawConnection) -> Status:
            status, _ = await connection.get("/v1/trainings?limit=20", next(keys))
            return Status(status)

        async def mixed(connection: RawConnection) -> Any:
            draw = random.random()
            return await (poll if draw < 0.90 else list_page if draw < 0.98 else submit)(connection)

        ids = []
        for _ in range(20):
            response = await submit()
            response.raise_for_status()
            ids.append(response.json()["id"])

        async def phase(name: str, make_request: Any) -> Phase:
            return await run_phase(name, make_request, args.duration, args.concurrency, api_pids)

        # Warm up connections and caches (every key once).
        await run_phase("warmup", poll, 2, args.concurrency, api_pids)
        phases = [
            await phase("status polls", poll),
            await phase(f"submissions ({args.images} images)", submit),
            await phase("mix 90/8/2 poll/list/submit", mixed),
        ]
    return phases


async def sse_phase(base_url: str, settings: Settings, args: argparse.Namespace, api_pids: list[int]) -> dict[str, Any]:
    """bench/sse_phase.py's streams (its fake worker publishes through the worker's own code), with the
    API's CPU over the phase from /proc as for the request phases."""
    from bench.sse_phase import run_sse_phase

    cpu_before, idle_before = cpu_seconds(api_pids), machine_times()
    result = await run_sse_phase(
        api_url=base_url, settings=settings, streams=args.sse_streams, seconds=args.sse_seconds
    )
    idle_after = machine_times()
    result["api_cpu_seconds"] = round(cpu_seconds(api_pids) - cpu_before, 2)
    result["machine_idle_percent"] = round(
        100 * (idle_after[0] - idle_before[0]) / max(1, idle_after[1] - idle_before[1]), 1
    )
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    return result


def measure_overhead(runs: int, steps: int) -> dict[str, Any]:
    """Train `runs` times on the embedded default; the first (cold: imports, model load) is reported apart."""
    samples = sorted((ROOT / "models" / "reference" / "samples").glob("*.png"))[:4]
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in samples]
    data_dir = Path(tempfile.mkdtemp(prefix="leap-overhead-"))
    port = free_port()
    # The embedded default: no database, broker or storage settings (a model registry may be given).
    kept = ("LEAP_MODEL_REGISTRY", "LEAP_TRAINER")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_") or k in kept}
    env["LEAP_DATA_DIR"] = str(data_dir)
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, float]] = []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {(data_dir / 'api-key').read_text().strip()}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            for _ in range(runs):
                started = time.perf_counter()
                response = client.post("/v1/trainings", files=files, data={"steps": str(steps)})
                upload = time.perf_counter() - started
                response.raise_for_status()
                training_id = response.json()["id"]
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    body = client.get(f"/v1/trainings/{training_id}").json()
                    if body["status"] in ("succeeded", "failed", "canceled"):
                        break
                    time.sleep(0.05)
                if body["status"] != "succeeded":
                    raise RuntimeError(f"training {body['status']}: {body['error']}")
                created, claimed, finished = (
                    datetime.fromisoformat(body[name]) for name in ("created_at", "started_at", "finished_at")
                )
                rows.append(
                    {
                        "upload_to_202_s": round(upload, 3),
                        "queued_to_claimed_s": round((claimed - created).total_seconds(), 3),
                        "worker_outside_training_s": round(
                            (finished - claimed).total_seconds() - body["usage"]["compute_seconds"], 3
                        ),
                        "compute_s": round(body["usage"]["compute_seconds"], 3),
                    }
                )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"steps": steps, "cold": rows[0], "warm": rows[1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--images", type=int, default=4, help="images per submission")
    parser.add_argument("--keys", type=int, default=200, help="API keys sharing the load (600 requests/min each)")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default=None, help="an empty Redis DB to use (default: a private redis-server)")
    parser.add_argument("--overhead", type=int, default=4, help="embedded-default training runs (0: skip)")
    parser.add_argument("--overhead-steps", type=int, default=2, help="steps per overhead run")
    parser.add_argument("--sse-streams", type=int, default=200, help="concurrent SSE streams (0: skip the phase)")
    parser.add_argument("--sse-seconds", type=float, default=60.0, help="how long the streams are held open")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: print only)")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    name = f"leap_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.pg_admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    with contextlib.ExitStack() as scratch:
        args.redis = scratch.enter_context(own_redis(args.redis))
        workdir = scratch.enter_context(work_dir("leap-bench-"))
        phases, sse, peak_rss, peak_process_rss = run_api_phases(args, database_url, workdir, name)
    report(args, phases, sse, peak_rss, peak_process_rss, load_start)
    return 0


def run_api_phases(
    args: argparse.Namespace, database_url: str, workdir: Path, name: str
) -> tuple[list[Phase], dict[str, Any] | None, float, float]:
    """The API on `database_url` (dropped afterwards): the load phases and the SSE phase."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")} | {
        "LEAP_DATABASE_URL": database_url,
        "LEAP_BROKER_URL": args.redis,
        "LEAP_STORAGE_URL": f"file://{workdir / 'files'}",
        "LEAP_DATA_DIR": str(workdir),
    }
    settings = Settings(database_url=database_url, broker_url=args.redis, data_dir=workdir)
    upgrade_database(settings)
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers", str(args.api_workers)],
        cwd=ROOT,
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    peak_rss = peak_process_rss = 0.0
    stop = threading.Event()

    def sample_rss() -> None:
        nonlocal peak_rss, peak_process_rss
        while not stop.wait(0.2):
            total, largest = process_tree_rss_mb(api.pid)
            peak_rss, peak_process_rss = max(peak_rss, total), max(peak_process_rss, largest)

    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        api_pids = process_tree(api.pid)
        phases = asyncio.run(benchmark(base_url, args, api_pids))
        sse = asyncio.run(sse_phase(base_url, settings, args, api_pids)) if args.sse_streams else None
        stop.set()
        sampler.join()
    finally:
        api.terminate()
        api.wait(timeout=30)
        with psycopg.connect(args.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return phases, sse, peak_rss, peak_process_rss


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    sse: dict[str, Any] | None,
    peak_rss: float,
    peak_process_rss: float,
    load_start: float,
) -> None:
    """Print the table and write --json."""

    rows = [phase.summary() for phase in phases]
    header = (
        f"{'phase':<28} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'API CPU ms/req':>15} {'API cores':>10} {'client ms/req':>14} {'idle %':>7} {'load 1m':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['phase']:<28} {row['requests']:>9} {row['errors']:>7} {row['per_second']:>8} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8} {row['api_cpu_ms_per_request']:>15} "
            f"{row['api_cores']:>10} {row['client_cpu_ms_per_request']:>14} "
            f"{row['machine_idle_percent']:>7} {row['load_average_1m']:>8}"
        )
        if row["errors"]:
            print(f"  statuses: {row['statuses']}")
    print(
        f"peak API RSS: {peak_process_rss:.0f} MB per process, {peak_rss:.0f} MB for all "
        f"{args.api_workers} workers and their supervisor"
    )
    if sse is not None:
        print(
            f"SSE: {sse['streams_opened']}/{sse['streams']} streams opened, {sse['streams_completed']} ended after "
            f"their final status; progress events {sse['progress_received']}/{sse['progress_published']} "
            f"(missed {sse['missed_events']}, duplicated {sse['duplicate_events']}), errors {sse['errors']}; "
            f"publish-to-receipt p50 {sse['latency_ms']['p50']} ms, p99 {sse['latency_ms']['p99']} ms; "
            f"{sse['seconds']} s; API CPU {sse['api_cpu_seconds']} s; idle {sse['machine_idle_percent']}%"
        )
    overhead = None
    if args.overhead:
        overhead = measure_overhead(args.overhead, args.overhead_steps)
        print(f"\noverhead on the embedded default ({args.overhead_steps} training steps per run)")
        names = ("upload_to_202_s", "queued_to_claimed_s", "worker_outside_training_s", "compute_s")
        print(f"{'run':<6}" + "".join(f"{name:>28}" for name in names))
        runs = [("cold", overhead["cold"])] + [(f"warm{i}", row) for i, row in enumerate(overhead["warm"])]
        for label, row in runs:
            print(f"{label:<6}" + "".join(f"{row[name]:>28}" for name in names))
    result = {
        "phases": rows,
        "api_peak_rss_mb": round(peak_rss, 1),
        "api_peak_rss_per_process_mb": round(peak_process_rss, 1),
        "sse": sse,
        "overhead": overhead,
        "config": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "api_workers": args.api_workers,
            "images_per_submission": args.images,
            "api_keys": args.keys,
            "cpus": os.cpu_count(),
            # Other work on the machine skews every number: record how busy it was.
            "load_average_1m_start": load_start,
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        },
    }
    write_results(args.json, result)


if __name__ == "__main__":
    sys.exit(main())
