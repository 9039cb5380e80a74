"""Submission-to-succeeded wall time of a default job on the embedded `leap serve`, booster vs token.

    python bench/default_job_e2e.py [--runs 3] [--json bench/results/default_jobs_e2e.json]

Starts `leap serve` (SQLite, local files, filesystem broker) in a temporary data directory with one
torch thread, warms the worker with one job, then submits the first validation concept's 8 views as
default jobs (no steps: they stop when done) alternating init=booster and init=token, and times
POST -> status succeeded (polled every 100 ms).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scratch import timed_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", default="pivotal")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from models.reference.concepts import benchmark_concepts

    item = benchmark_concepts("val")[0]
    files = []
    for index, image in enumerate(item.views()):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append(("images", (f"{index}.png", buffer.getvalue(), "image/png")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = Path(tempfile.mkdtemp(prefix="leap-e2e-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")}
    # Offline: the registry's text model is not fetched from the hub while the worker preloads.
    env |= {"LEAP_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = (data_dir / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {(data_dir / 'api-key').read_text().strip()}"}

        def one(init: str) -> dict:
            body, wall = timed_training(url, headers, files, {"init": init, "mode": args.mode})
            return {
                "init": init,
                "status": body["status"],
                "wall_s": round(wall, 3),
                "steps": body["usage"]["steps"] if body["usage"] else None,
                "stop_reason": body["stop_reason"],
                "init_used": body["init_used"],
                "compute_seconds": body["usage"]["compute_seconds"],
            }

        warm = one("booster")
        runs = [one(init) for _ in range(args.runs) for init in ("booster", "token")]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = {
        init: {
            "wall_s_median": statistics.median(r["wall_s"] for r in runs if r["init"] == init),
            "steps_median": statistics.median(r["steps"] for r in runs if r["init"] == init),
        }
        for init in ("booster", "token")
    }
    report = {"concept": item.name, "mode": args.mode, "warmup": warm, "runs": runs, "summary": summary}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
