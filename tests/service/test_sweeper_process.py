"""The sweeper as operators run it, a real `leap worker --queues maintenance --pool solo --beat`
process: its embedded beat dies with it (kill -9 included), two beats never both send, and a data
folder that does not exist yet is created (or refused loudly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from .helpers import REPO_ROOT, alive, pool_children, settings_env, wait_for
from .processes import WorkerProcess

SENT = "Sending due task sweep (sweeper.sweep)"


def _sweeper(settings, data_dir: Path, log_dir: Path) -> WorkerProcess:  # type: ignore[no-untyped-def]
    """A sweeper with a 1 s interval; each keeps its own schedule file, as on two hosts."""
    return WorkerProcess(
        settings.model_copy(update={"sweeper_interval": timedelta(seconds=1), "data_dir": data_dir}),
        queues=settings.maintenance_queue,
        pool="solo",
        beat=True,
        log_dir=log_dir,
    )


def test_two_beats_never_both_send_and_a_killed_sweeper_takes_its_beat_along(settings, tmp_path):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = _sweeper(settings, tmp_path / "first", tmp_path)
    second = _sweeper(settings, tmp_path / "second", tmp_path)
    try:
        wait_for(lambda: SENT in first.log() + second.log(), timeout=20, message="a beat to send")
        time.sleep(4)
        sending = [sweeper for sweeper in (first, second) if SENT in sweeper.log()]
        assert len(sending) == 1, (first.log()[-2000:], second.log()[-2000:])
        (leader,) = sending
        standby = second if leader is first else first
        assert "another beat sends; standing by" in standby.log()

        (beat,) = pool_children(leader.process.pid)  # solo pool: the only child is the embedded beat
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait()
        wait_for(lambda: not alive(beat), timeout=10, message="the orphaned beat to exit")
        wait_for(lambda: SENT in standby.log(), timeout=15, message="the other beat to take over")
    finally:
        for sweeper in (first, second):
            sweeper.stop()


def test_sweeper_creates_a_missing_data_folder_and_sweeps(settings, tmp_path):
    data_dir = tmp_path / "not-there" / "yet"
    sweeper = _sweeper(settings, data_dir, tmp_path)
    try:
        wait_for(
            lambda: "Task sweeper.sweep[" in sweeper.log() and "succeeded" in sweeper.log(),
            timeout=20,
            message="a sweep to run",
        )
    finally:
        sweeper.stop()
    assert "FileNotFoundError" not in sweeper.log()
    assert (data_dir / "celerybeat-schedule").exists() or list(data_dir.glob("celerybeat-schedule*"))


def test_sweeper_refuses_to_start_when_the_data_folder_cannot_be_made(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = settings_env(settings.model_copy(update={"data_dir": blocker / "data"}))
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--queues", settings.maintenance_queue, "--pool", "solo", "--beat"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"LEAP_DATA_DIR {blocker / 'data'}" in result.stderr
