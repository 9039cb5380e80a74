"""Celery beat for the sweeper: one sending beat per deployment, and no beat outliving its worker.

Two beats can run at once (a restarted sweeper beside one that lost its parent, or two sweepers
started by mistake). Each holds a lease before it sends: a Redis key when the broker is Redis, an
flock on a file in the data folder with the embedded filesystem broker (one host by definition).
The beat that does not hold it keeps ticking and takes over once the holder stops renewing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Protocol

from celery.beat import PersistentScheduler
from celery.signals import beat_embedded_init

from app.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class Lease(Protocol):
    def hold(self) -> bool:
        """Acquire or renew; True while this beat holds the lease."""

    def release(self) -> None:
        """Give the lease up (a clean stop), so another beat takes over at once."""


def lease_duration(settings: Settings) -> timedelta:
    """How long a beat's lease lasts without renewal: two sweeper intervals, between 3 s and 30 s."""
    return min(max(settings.sweeper_interval * 2, timedelta(seconds=3)), timedelta(seconds=30))


class RedisLease:
    """SET NX PX; renewed and released only by the token that holds it."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, url: str, key: str, duration: timedelta) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.key = key
        self.token = f"{os.getpid()}:{secrets.token_hex(8)}"
        self.milliseconds = int(duration.total_seconds() * 1000)

    def hold(self) -> bool:
        try:
            if self.client.set(self.key, self.token, nx=True, px=self.milliseconds):
                return True
            return bool(self.client.eval(self._RENEW, 1, self.key, self.token, self.milliseconds))
        except Exception:
            # Redis unreachable: nothing could be sent anyway; the lease lapses on its own.
            logger.warning("beat: cannot reach Redis for the beat lease", exc_info=True)
            return False

    def release(self) -> None:
        try:
            self.client.eval(self._RELEASE, 1, self.key, self.token)
        except Exception:
            logger.warning("beat: could not release the beat lease", exc_info=True)


class FileLease:
    """An exclusive flock on a file, held for as long as the process lives (or until released)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def hold(self) -> bool:
        import fcntl

        if self._file is not None:
            return True
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def make_lease(settings: Settings) -> Lease:
    """The beat lease for this deployment's broker."""
    if settings.broker_url is not None and settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisLease(settings.broker_url, f"leap:beat:{settings.maintenance_queue}", lease_duration(settings))
    return FileLease(settings.data_dir.resolve() / "beat.lock")


class SingleBeatScheduler(PersistentScheduler):
    """The persistent (shelve) scheduler, sending only while it holds the deployment's beat lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = kwargs["app"].conf.leap_settings
        self._lease = make_lease(settings)
        self._renew_every = lease_duration(settings).total_seconds() / 3
        self._leading: bool | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # shelve cannot create a file in a folder that does not exist yet (a fresh LEAP_DATA_DIR).
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        leading = self._lease.hold()
        if leading != self._leading:
            self._leading = leading
            logger.info("beat: %s", "holds the beat lease, sending" if leading else "another beat sends; standing by")
        if not leading:
            return self._renew_every
        return min(super().tick(*args, **kwargs), self._renew_every)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._lease.release()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # Beat's loop ends on SystemExit and then closes the scheduler (schedule saved, lease released).
    raise SystemExit(0)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


@beat_embedded_init.connect
def _die_with_the_worker(**_: Any) -> None:
    """The embedded beat (worker -B) stops when its worker stops, even on kill -9 of the worker."""
    from billiard.process import current_process

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The worker's pid as recorded before the fork; os.getppid() differs once it has died.
    parent = getattr(current_process(), "_parent_pid", None) or os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the worker died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="beat-parent-watch", daemon=True).start()
