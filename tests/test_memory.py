import sys

import pytest

from label_studio_ale.memory import peak_rss_mb, return_large_buffers_to_os


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt; other allocators are left alone")
def test_the_mmap_threshold_is_fixed_on_glibc():
    assert return_large_buffers_to_os() is True


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM is Linux's")
def test_the_peak_resident_memory_grows_with_what_the_process_touches():
    before = peak_rss_mb()
    block = bytes(range(256)) * (256 * 1024)  # 64 MB written, so every page is resident (zeros would stay unmapped)
    assert peak_rss_mb() >= before + 48
    del block
