"""A worker's CPU settings: freed memory kept for the next photo instead of being faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from deepfake_detector.cpu_tuning import keep_freed_memory

_FAULTS = """
import resource, sys
import numpy as np
from deepfake_detector.cpu_tuning import keep_freed_memory
keep_freed_memory(int(sys.argv[1]))
np.ones((2160, 3840, 3), np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame = np.ones((2160, 3840, 3), np.uint8)
    del frame
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(megabytes: int) -> int:
    return int(subprocess.run([sys.executable, "-c", _FAULTS, str(megabytes)], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    default, kept = page_faults(0), page_faults(256)
    print(f"page faults for 20 4K frames: glibc defaults {default}, freed memory kept {kept}")
    # Each fresh 25 MB mapping faults hundreds of times (thousands without huge pages); kept memory, almost never.
    assert kept * 10 < default


def test_zero_keeps_the_defaults():
    assert keep_freed_memory(0) is False
