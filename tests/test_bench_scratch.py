"""Benchmarks touch only their own data: a private Redis (or an empty one they were given), a work
folder they delete, and results only where --json says."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import redis

BENCH = Path(__file__).resolve().parents[1] / "bench"
# bench/ is a folder of scripts, not an installed package.
_spec = importlib.util.spec_from_file_location("bench_scratch", BENCH / "scratch.py")
assert _spec is not None and _spec.loader is not None
scratch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scratch)
own_redis, work_dir, write_results = scratch.own_redis, scratch.work_dir, scratch.write_results


def test_a_private_redis_is_started_and_removed():
    with own_redis(None) as url:
        assert not url.startswith("redis://127.0.0.1:6379/")
        client = redis.Redis.from_url(url)
        client.set("bench", "1")
        assert client.dbsize() == 1
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_a_given_redis_that_holds_data_is_refused_and_left_alone():
    with own_redis(None) as url:
        client = redis.Redis.from_url(url)
        client.set("someone-elses", "data")
        with pytest.raises(SystemExit, match="holds 1 keys"), own_redis(url):
            pass
        assert client.get("someone-elses") == b"data"
        client.delete("someone-elses")
        with own_redis(url) as given:
            assert given == url


def test_the_work_folder_is_deleted_and_results_written_only_when_asked(tmp_path):
    with work_dir("leap-bench-test-") as folder:
        (folder / "file").write_text("x")
    assert not folder.exists()
    write_results(None, {"a": 1})
    write_results(tmp_path / "out" / "r.json", {"a": 1})
    assert (tmp_path / "out" / "r.json").read_text().strip().startswith("{")


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.name)
def test_no_benchmark_flushes_redis_or_writes_tracked_results_by_default(script):
    source = script.read_text()
    assert not re.search(r"flushdb|flushall", source, re.IGNORECASE)
    assert not re.search(r'"--json".*default=ROOT', source)
    assert not re.search(r'"--redis", default="redis://', source)
