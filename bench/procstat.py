"""Memory and CPU time of benchmarked processes, read from /proc: one process, or a process
and its children."""

from __future__ import annotations

import os
from pathlib import Path


def status_bytes(pid: int, field: str) -> int:
    """A size field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that are still running."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found.append(current)
    return found


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) ``pid`` has used so far, in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the name: state is field 3, utime and stime fields 14 and 15 (proc(5))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
