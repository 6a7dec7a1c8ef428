"""Process memory: large image buffers go back to the operating system when freed.

glibc raises its mmap threshold each time a large block is freed (up to 32 MB),
after which a 16 MB download or a frame's decoding buffers come from the heap
arenas of the threads that made them and stay resident as fragments: measured
here, a worker's resident memory grew by 400 MB over ten 45 MP frames. A fixed
threshold keeps every block of at least MMAP_THRESHOLD bytes mapped on its own
and unmapped on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Blocks at least this large are mapped on their own (glibc's M_MMAP_THRESHOLD).
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_large_buffers_to_os() -> bool:
    """Fix glibc's mmap threshold for this process (and the children it forks). -> whether it applied.

    A no-op elsewhere (macOS, musl): their allocators behave differently.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not applied:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; large buffers use the allocator's defaults")
    return applied


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux's VmHWM).

    Not ru_maxrss: Linux keeps that across exec, so a process started from a
    large parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
