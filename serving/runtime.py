"""Process tuning for serving, applied once at start-up (torch threads, GIL switch interval, BLAS
threads, glibc malloc thresholds)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def freeze_imported_heap() -> int:
    """Move every object alive now (the imported modules: torch, mlflow, FastAPI, ...) out of the garbage
    collector's reach, before any model is loaded; returns how many were frozen.

    A full (oldest-generation) collection visits every tracked object: ~330,000 after start-up, ~160 ms on
    the GIL (measured in a serving process, docs/benchmarks.md), a stall for every request in flight whenever
    CPython runs one. Frozen, they are never visited again (7.5 ms for the same pass); the models and whatever
    requests create stay collectable. Models are loaded after this on purpose: a frozen model caught in a
    reference cycle would never be freed when a new version replaces it.
    """
    import torch  # noqa: F401 - the heavy imports a model load does, done now so that they are frozen too

    import reco.artifacts.bundle
    import reco.artifacts.registry
    import reco.models.scorer  # noqa: F401

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
