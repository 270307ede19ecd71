"""Settings of the process that scores: CPU threads (sized from the container's CPU quota) and how freed
memory is kept.

A container limited to 2 CPUs on a 64-core node sees 64 cores in ``os.cpu_count()``; threads sized from that
number fight over the 2 CPUs' worth of time the quota grants, and every worker is throttled.
:func:`available_cpus` reads the quota from the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) and the
cores the process may run on (its affinity), and returns the smaller.

A worker decodes photos of up to tens of megabytes, one after another. With glibc's defaults each of those
buffers is mapped fresh from the kernel and unmapped when freed, so every photo faults its pages in again:
on a virtual machine that costs as much as the decoding itself (a 4K JPEG: 21 ms with the defaults, 13 ms
with freed memory kept). :func:`keep_freed_memory` makes the heap serve such buffers and keep what they
free for the next request, at the price of holding the largest batch's memory once it has been seen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from pathlib import Path

import cv2
import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup may use (e.g. 2.5), or None without a quota. v2 (``cpu.max``: "max
    100000" or "250000 100000") is read first, then v1 (``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)."""
    v2 = cgroup_root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can use: its affinity's cores, capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def threads_per_worker(workers: int, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The available CPUs divided among a model's workers, so that they do not oversubscribe them."""
    return max(1, available_cpus(cgroup_root) // max(1, int(workers)))


def use_cpu_threads(threads: int) -> None:
    """PyTorch's intra-op threads, and OpenCV's for the resizes and colour conversions that share the cores."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def keep_freed_memory(megabytes: int) -> bool:
    """Serve allocations below ``megabytes`` from the heap and keep up to that much freed memory for reuse.

    glibc only (``mallopt``); elsewhere, or with 0, nothing changes. Returns whether the setting took.
    """
    if megabytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("no glibc mallopt here; freed memory is returned to the system as usual")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    size = megabytes << 20
    return bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, size))

