"""Submission-to-succeeded wall time of a default job on the embedded `leap serve`, booster vs token.

    python bench/default_job_e2e.py [--runs 3] [--json bench/results/default_jobs_e2e.json]

Starts `leap serve` (SQLite, local files, filesystem broker) in a temporary data directory with one
torch thread, warms the worker with one job, then submits the first validation concept's 8 views as
default jobs (no steps: they stop when done) alternating init=booster and init=token, and times
POST -> status succeeded (polled every 100 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scratch import concept_files, embedded_serve, timed_training, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", default="pivotal")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from models.reference.concepts import benchmark_concepts

    item = benchmark_concepts("val")[0]
    files = concept_files()
    with embedded_serve("leap-e2e-") as (url, headers):

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
    summary = {
        init: {
            "wall_s_median": statistics.median(r["wall_s"] for r in runs if r["init"] == init),
            "steps_median": statistics.median(r["steps"] for r in runs if r["init"] == init),
        }
        for init in ("booster", "token")
    }
    report = {"concept": item.name, "mode": args.mode, "warmup": warm, "runs": runs, "summary": summary}
    print(json.dumps(report, indent=2))
    write_results(args.json, report)


if __name__ == "__main__":
    main()
