"""Processes that `leap serve` starts die with it, however it dies.

The kernel's parent-death signal (PR_SET_PDEATHSIG) can only send one signal, and a Celery worker
answers SIGTERM with a warm shutdown: it finishes the training it is running, for as long as that
takes, with no API left to report to. So each worker `leap serve` starts also watches its parent
itself and, once it is gone, kills its whole process group (itself, its pool processes, its beat)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

PARENT_PID_ENV = "LEAP_EXIT_WITH_PARENT"
"""Set by `leap serve` for its workers: the pid whose death ends them."""
POLL_SECONDS = 0.5


def _watch(parent_pid: int, poll_seconds: float) -> None:
    # Once the parent is gone this process is re-parented (to init or a subreaper): getppid changes.
    while os.getppid() == parent_pid:
        threading.Event().wait(poll_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)  # not the group's leader (started by hand): at least itself


def exit_with_parent(parent_pid: int | None = None, *, poll_seconds: float = POLL_SECONDS) -> bool:
    """Start the watch when LEAP_EXIT_WITH_PARENT (or `parent_pid`) names a parent; True when started."""
    if parent_pid is None:
        value = os.environ.get(PARENT_PID_ENV, "")
        if not value.isdigit():
            return False
        parent_pid = int(value)
    threading.Thread(target=_watch, args=(parent_pid, poll_seconds), name="parent-watch", daemon=True).start()
    return True
