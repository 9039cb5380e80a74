"""What previews cost on leap-tiny: default booster jobs on the embedded `leap serve`, previews on and off.

    python bench/previews.py [--runs 5] [--json bench/results/previews.json]

Starts `leap serve` (SQLite, local files, filesystem broker) in a temporary data directory with one
torch thread, warms the worker with one job, then submits the first validation concept's 8 views as
default jobs (no steps: they stop when done; init=booster) alternating previews on and off, and times
POST -> status succeeded (polled every 100 ms). Reports each side's median wall time with its range,
the previews' own time as the worker measured it (manifest `previews.seconds`), and both as a fraction
of the median job without previews.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scratch import concept_files, embedded_serve, timed_training, write_results  # noqa: E402


def _job(url: str, headers: dict[str, str], files: list, previews: bool) -> dict[str, Any]:
    body, wall = timed_training(url, headers, files, {"init": "booster", "previews": str(previews).lower()})
    return {
        "previews": previews,
        "status": body["status"],
        "wall_s": round(wall, 3),
        "steps": body["usage"]["steps"] if body["usage"] else None,
        "compute_seconds": body["usage"]["compute_seconds"] if body["usage"] else None,
        "preview_seconds": body["previews"]["seconds"] if body.get("previews") else None,
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="jobs per side")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    files = concept_files()
    with embedded_serve("leap-previews-") as (url, headers):
        warmup = _job(url, headers, files, True)
        runs = [_job(url, headers, files, previews) for _ in range(args.runs) for previews in (True, False)]
    assert all(run["status"] == "succeeded" for run in runs), runs
    on = [run["wall_s"] for run in runs if run["previews"]]
    off = [run["wall_s"] for run in runs if not run["previews"]]
    preview = [run["preview_seconds"] for run in runs if run["previews"]]
    baseline = statistics.median(off)
    summary = {
        "job_without_previews_wall_s": _spread(off),
        "job_with_previews_wall_s": _spread(on),
        "preview_seconds": _spread(preview),
        "preview_fraction_of_job": round(statistics.median(preview) / baseline, 3),
        "wall_increase_fraction": round((statistics.median(on) - baseline) / baseline, 3),
        "billed_steps_same": sorted(run["steps"] for run in runs if run["previews"])
        == sorted(run["steps"] for run in runs if not run["previews"]),
    }
    report = {
        "command": "python bench/previews.py --runs " + str(args.runs),
        "machine": f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1 in the worker",
        "date": time.strftime("%Y-%m-%d"),
        "base_model": "leap-tiny",
        "warmup": warmup,
        "runs": runs,
        "summary": summary,
    }
    print(json.dumps(report, indent=2))
    write_results(args.json, report)


if __name__ == "__main__":
    main()
