import sys
from pathlib import Path

import pytest

from label_studio_ale.memory import peak_rss_mb, return_large_buffers_to_os


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt; other allocators are left alone")
def test_the_mmap_threshold_is_fixed_on_glibc():
    assert return_large_buffers_to_os() is True


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM is Linux's")
def test_the_peak_resident_memory_grows_with_what_the_process_touches():
    status = Path("/proc/self/status").read_text().splitlines()
    resident = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    assert peak_rss_mb() >= resident
    block = bytes(range(256)) * (256 * 1024)  # 64 MB written, so every page is resident (zeros would stay unmapped)
    assert peak_rss_mb() >= resident + 48
    del block
