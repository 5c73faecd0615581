"""Is a process still the one we started? Shared by the embedded Redis (`reco.state.embedded_redis`)
and the dev stack's supervisor (`reco.devstack`), so the server opener never imports the supervisor."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pid_alive", "proc_start_time"]


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/pid/stat); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True when `pid` runs and (if given) is still the process that started at `start_time`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    actual = proc_start_time(pid)
    if actual is None:
        return not Path("/proc").is_dir()  # no /proc: trust kill(0)
    return start_time is None or actual == start_time
