"""Settings of the process that scores: CPU threads and how freed memory is kept.

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

import cv2
import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


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
