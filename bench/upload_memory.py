"""Memory of the API under concurrent maximum-size uploads.

    .venv/bin/python bench/upload_memory.py [--kind bytes|pixels] [--concurrency 3] [--rounds 3]

Starts its own `leap api` (one process) on a throwaway Postgres database with Redis as the broker
and local-disk storage, then sends `--rounds` rounds of `--concurrency` simultaneous submissions and
samples the API's resident memory (VmRSS) every 50 ms. `--kind bytes`: each submission is as large
as LEAP_MAX_UPLOAD_BYTES allows, 8 incompressible PNGs just under LEAP_MAX_IMAGE_BYTES each;
`--kind pixels`: 8 JPEGs of just under LEAP_MAX_IMAGE_PIXELS each (the most decoding work).
Prints the idle RSS before, the peak during and the idle RSS after each round; writes JSON.
Target: peak <= 300 MiB, and back to the first baseline after each round. No worker runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psycopg
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import upgrade_database  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tenants.local_key import ensure_local_key  # noqa: E402
from bench.scratch import own_redis, work_dir  # noqa: E402

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


class PeakSampler:
    """The highest RSS of a process while the `with` block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def noise_pngs(count: int, max_bytes: int) -> list[bytes]:
    """Incompressible PNGs just under max_bytes each (random pixels, stored without compression)."""
    side = int(math.sqrt((max_bytes - 64 * 1024) / 3))
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
        images.append(buffer.getvalue())
    return images


def max_pixel_jpegs(count: int, max_pixels: int) -> list[bytes]:
    """JPEGs of just under max_pixels each (a gradient with noise: a few MB, 3 bytes a pixel decoded)."""
    side = int(math.sqrt(max_pixels)) - 1
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    images = []
    for index in range(count):
        base = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.5 + index * 7) % 256
        noise = rng.integers(0, 24, size=(side, side, 1), dtype=np.uint8)
        pixels = np.broadcast_to(base, (side, side, 3)).astype(np.uint8) + noise
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("bytes", "pixels"), default="bytes")
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8, help="images per submission")
    parser.add_argument("--decode-concurrency", type=int, default=None, help="LEAP_UPLOAD_DECODE_CONCURRENCY")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before reading the after-RSS")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default=None, help="an empty Redis DB to use (default: a private redis-server)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    defaults = Settings()
    if args.kind == "bytes":
        per_image = min(defaults.max_image_bytes, (defaults.max_upload_bytes - 64 * 1024) // args.images)
        images = noise_pngs(args.images, per_image)
    else:
        images = max_pixel_jpegs(args.images, defaults.max_image_pixels)
    request_bytes = sum(len(data) for data in images)
    print(f"{args.kind}: {args.images} images, {request_bytes / MIB:.1f} MiB per submission", flush=True)

    name = f"leap_membench_{secrets.token_hex(4)}"
    with psycopg.connect(args.pg_admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    scratch = contextlib.ExitStack()
    args.redis = scratch.enter_context(own_redis(args.redis))
    workdir = scratch.enter_context(work_dir("leap-membench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")} | {
        "LEAP_DATABASE_URL": database_url,
        "LEAP_BROKER_URL": args.redis,
        "LEAP_STORAGE_URL": f"file://{workdir / 'files'}",
        "LEAP_DATA_DIR": str(workdir),
        "LEAP_MAX_CONCURRENT_TRAININGS": "10000",
        "LEAP_RATE_LIMIT_REQUESTS": "0",
    }
    if args.decode_concurrency is not None:
        env["LEAP_UPLOAD_DECODE_CONCURRENCY"] = str(args.decode_concurrency)
    settings = Settings(database_url=database_url, broker_url=args.redis, data_dir=workdir)
    upgrade_database(settings)
    key = ensure_local_key(settings)
    port = 18000 + secrets.randbelow(2000)
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port)], cwd=ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    rounds = []
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(images)]
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
            client.get("/v1/trainings")  # imports and connections warm
        time.sleep(1)
        first_baseline = rss_mib(api.pid)

        def submit(_: int) -> int:
            with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
                return client.post("/v1/trainings", files=files).status_code

        for number in range(args.rounds):
            before = rss_mib(api.pid)
            sampler = PeakSampler(api.pid)
            started = time.perf_counter()
            with sampler, ThreadPoolExecutor(args.concurrency) as pool:
                statuses = list(pool.map(submit, range(args.concurrency)))
            seconds = time.perf_counter() - started
            peak = max(before, sampler.peak)
            time.sleep(args.settle)
            after = rss_mib(api.pid)
            row = {
                "round": number + 1,
                "statuses": statuses,
                "seconds": round(seconds, 1),
                "idle_before_mib": round(before, 1),
                "peak_mib": round(peak, 1),
                "idle_after_mib": round(after, 1),
            }
            rounds.append(row)
            print(
                f"round {row['round']}: statuses {statuses} in {row['seconds']} s; RSS idle {row['idle_before_mib']}"
                f" -> peak {row['peak_mib']} -> idle {row['idle_after_mib']} MiB",
                flush=True,
            )
    finally:
        api.terminate()
        api.wait(timeout=30)
        with psycopg.connect(args.pg_admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        scratch.close()  # the private Redis and the work folder
    result = {
        "kind": args.kind,
        "concurrency": args.concurrency,
        "images_per_submission": args.images,
        "submission_mib": round(request_bytes / MIB, 1),
        "decode_concurrency": args.decode_concurrency or Settings().upload_decode_concurrency,
        "first_idle_mib": round(first_baseline, 1),
        "rounds": rounds,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
