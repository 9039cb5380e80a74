"""Process memory settings of the API: large buffers go back to the system when freed."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def release_large_buffers() -> bool:
    """glibc only: give every allocation of 128 KiB or more its own mapping, unmapped when freed,
    and cap the per-thread heaps at two.

    By default glibc raises that threshold up to 32 MiB after the first large free, after which
    image buffers (tens of MB per upload) are carved from heaps that never shrink: the API's idle
    memory crept up with every batch of uploads. Returns whether the settings were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    if not applied:
        logger.info("mallopt refused the memory settings (not glibc?)")
    return applied
