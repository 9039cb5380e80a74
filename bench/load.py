"""Load benchmark of the Postgres-backed API on one machine: status polls/s and submissions/s.

    .venv/bin/python bench/load.py [--duration 15] [--concurrency 32] [--api-workers 2]

Starts its own API (`leap api`) on a throwaway Postgres database with Redis as the broker and
local-disk storage, creates a tenant, then runs two phases with an asyncio httpx client:
GET /v1/trainings/{id} polls, and POST /v1/trainings with 4 small PNGs each. Prints a table
and writes JSON (latency p50/p99, throughput, errors, peak RSS of the API processes).
Targets (issue 5, 2 cores): >= 500 polls/s with p99 < 100 ms, >= 50 submissions/s, zero
errors, API RSS <= 300 MB. No worker runs: submissions stay queued.

Then (unless --overhead 0) it measures the overhead around training on the embedded default
(`leap serve`, SQLite, filesystem broker, local files; real trainer, leap-tiny, a few steps):
upload -> 202 (POST latency), queued -> claimed (started_at - created_at) and the worker's time
outside the training function, an upper bound of finished -> artifacts listed (finished_at -
started_at - compute_seconds: fetching inputs, uploading artifacts, recording). Target < 1 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
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
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli import ensure_local_key  # noqa: E402
from app.db import upgrade_database  # noqa: E402
from app.settings import Settings  # noqa: E402


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | str]:
        ordered = sorted(self.latencies_ms) or [0.0]
        return {
            "phase": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "per_second": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2),
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


async def run_phase(name: str, make_request, duration: float, concurrency: int) -> Phase:  # type: ignore[no-untyped-def]
    phase = Phase(name)
    deadline = time.perf_counter() + duration

    async def user() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await make_request()
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok = False
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)
            phase.requests += 1
            phase.errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


async def benchmark(base_url: str, key: str, args: argparse.Namespace) -> list[Phase]:
    headers = {"Authorization": f"Bearer {key}"}
    images = [png(seed) for seed in range(args.images)]
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(images)]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:
        ids = []
        for _ in range(20):
            response = await client.post("/v1/trainings", files=files)
            response.raise_for_status()
            ids.append(response.json()["id"])
        # Warm up connections and caches.
        await run_phase("warmup", lambda: client.get(f"/v1/trainings/{random.choice(ids)}"), 2, args.concurrency)
        polls = await run_phase(
            "status polls",
            lambda: client.get(f"/v1/trainings/{random.choice(ids)}"),
            args.duration,
            args.concurrency,
        )
        submissions = await run_phase(
            "submissions (4 images)",
            lambda: client.post("/v1/trainings", files=files),
            args.duration,
            args.concurrency,
        )
    return [polls, submissions]


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
    return {"steps": steps, "cold": rows[0], "warm": rows[1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--images", type=int, default=4, help="images per submission")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--overhead", type=int, default=4, help="embedded-default training runs (0: skip)")
    parser.add_argument("--overhead-steps", type=int, default=2, help="steps per overhead run")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    name = f"leap_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.pg_admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    redis.Redis.from_url(args.redis).flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="leap-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")} | {
        "LEAP_DATABASE_URL": database_url,
        "LEAP_BROKER_URL": args.redis,
        "LEAP_STORAGE_URL": f"file://{workdir / 'files'}",
        "LEAP_DATA_DIR": str(workdir),
    }
    settings = Settings(database_url=database_url, broker_url=args.redis, data_dir=workdir)
    upgrade_database(settings)
    key = ensure_local_key(settings)
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
        phases = asyncio.run(benchmark(base_url, key, args))
        stop.set()
        sampler.join()
    finally:
        api.terminate()
        api.wait(timeout=30)
        with psycopg.connect(args.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(args.redis).flushdb()

    rows = [phase.summary() for phase in phases]
    header = f"{'phase':<24} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['phase']:<24} {row['requests']:>9} {row['errors']:>7} {row['per_second']:>8} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8}"
        )
    print(
        f"peak API RSS: {peak_process_rss:.0f} MB per process, {peak_rss:.0f} MB for all "
        f"{args.api_workers} workers and their supervisor"
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
        "overhead": overhead,
        "config": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "api_workers": args.api_workers,
            "images_per_submission": args.images,
            "cpus": os.cpu_count(),
            # Other work on the machine skews every number: record how busy it was.
            "load_average_1m_start": load_start,
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
