"""Handing freed heap memory back to the operating system after a flood.

A partial-frame flood makes the edge allocate many multi-megabyte buffers. When they are freed,
glibc keeps much of it: freeing a large mmapped chunk raises its mmap threshold (up to 32 MiB),
so later buffers of that size come from the heap, whose free pages stay mapped until
`malloc_trim` hands them back. `trim_heap` calls it through ctypes where glibc is the allocator
and does nothing elsewhere (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def can_trim_heap() -> bool:
    """Whether `trim_heap` can do anything here (glibc's `malloc_trim` is available)."""
    return _malloc_trim() is not None


def trim_heap() -> bool:
    """Return free heap pages to the OS; True when glibc released some."""
    fn = _malloc_trim()
    if fn is None:
        return False
    return bool(fn(0))


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
