import sys

import pytest

from label_studio_ale.memory import return_large_buffers_to_os


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt; other allocators are left alone")
def test_the_mmap_threshold_is_fixed_on_glibc():
    assert return_large_buffers_to_os() is True
