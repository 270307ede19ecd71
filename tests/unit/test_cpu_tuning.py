"""A worker's CPU settings: threads sized from the container's CPU quota, and freed memory kept for the next
photo instead of being faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from deepfake_detector.cpu_tuning import available_cpus, cpu_quota, keep_freed_memory, threads_per_worker

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


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "250000 100000\n"}, 2.5),  # cgroup v2, limits.cpu: 2500m
    ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),  # cgroup v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
    ({}, None),  # no cgroup files at all (not Linux, or not mounted)
])
def test_the_cpu_quota_is_read_from_either_cgroup_version(tmp_path: Path, files, quota) -> None:
    assert cpu_quota(_cgroup(tmp_path, files)) == quota


def test_threads_follow_the_quota_not_the_node(tmp_path: Path) -> None:
    """A container limited to 1.5 CPUs gets 2 whole CPUs' threads, shared by its workers; never fewer than 1."""
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup(tmp_path / "v2", {"cpu.max": "150000 100000"})) == min(cores, 2)
    assert available_cpus(_cgroup(tmp_path / "none", {"cpu.max": "max 100000"})) == cores
    assert threads_per_worker(2, _cgroup(tmp_path / "one", {"cpu.max": "100000 100000"})) == 1
    assert threads_per_worker(1, tmp_path / "missing") == cores

