"""Process tuning for serving, applied once at start-up (torch threads, GIL switch interval, BLAS
threads, glibc malloc thresholds)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def tune_runtime(threads: int) -> None:
    """Deliberate torch threads, and glibc malloc thresholds that stop the large forward buffers from
    being returned to the OS after every request (about 470 page faults, ~1 ms, per forward: NOTES.md)."""
    import torch

    torch.set_num_threads(threads)
    # A thread that wants the GIL back (the event loop after its Redis read) waits up to the switch interval
    # (5 ms by default) while another thread (impression log, model poll) runs Python: 0.2 ms bounds what
    # that adds. Under a steady stream of requests p50 went 3.4-3.8 -> 3.0-3.2 ms from 1 ms.
    sys.setswitchinterval(0.0002)
    try:  # OpenBLAS worker threads spin on the 2 shared cores: a 20x500 similarity took 9 ms, 0.9 ms on one
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass
    name = ctypes.util.find_library("c")
    if name and "libc" in name:
        try:
            libc = ctypes.CDLL(name)
            m_trim_threshold, m_mmap_threshold = -1, -3
            libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024)
            libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
        except (OSError, AttributeError):  # not glibc: nothing to tune
            pass
