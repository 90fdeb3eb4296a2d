"""Processes of this host: who we are (written into claim markers and run locks), whether a recorded
process still lives, and which processes work inside a directory (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path
from typing import Any


def owner_id(workdir: Path) -> str:
    """Who claims: this host's working directory (ticks in one working directory take turns)."""
    return hashlib.sha256(f"{socket.gethostname()}\0{Path(workdir).resolve()}".encode()).hexdigest()[:16]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_identity() -> dict[str, Any]:
    """This process: host, boot id, pid and start time (enough to tell later whether it is gone)."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True while process ``pid`` of this host exists (with ``start``: and is the one that started then, not a
    later process given the same pid)."""
    if Path("/proc/self/stat").exists():
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_dead(record: dict[str, Any]) -> bool:
    """True when the process that wrote ``record`` ran on this host and is gone (or the host rebooted)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record.get("boot") and _boot_id() and record["boot"] != _boot_id():
        return True
    return not pid_alive(record["pid"], record.get("start"))


def process_cwds() -> set[str]:
    """Working directories of every process we can see (Linux), other than this one."""
    cwds: set[str] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return cwds
    me = str(os.getpid())
    for name in entries:
        if name.isdigit() and name != me:
            with contextlib.suppress(OSError):
                cwds.add(os.readlink(f"/proc/{name}/cwd"))
    return cwds


def busy(run_dir: Path, cwds: set[str]) -> bool:
    """True when some process (an orphaned Snakemake or job) still works inside the run directory."""
    root = str(Path(run_dir).resolve())
    return any(c == root or c.startswith(root + os.sep) for c in cwds)
