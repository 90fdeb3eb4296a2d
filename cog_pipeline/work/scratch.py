"""Each image's private temp directory, and the sweep of those a killed batch job left behind.

An image is downloaded and converted in ``<root>/cog-pipeline-<host>-<pid>-<random>/`` (``root``: ``tmp_dir`` of
the config, else the system's temp dir), removed when the image is done. A batch job killed meanwhile (the OOM
killer, SIGKILL, a power cut) cannot remove it, and it holds up to an input image and its COG. The next batch job
on the same host removes the directories of processes that no longer exist (:func:`sweep`) and says so in its
log. The host and the process-ID namespace in the name (``<host>``: ``<host name>_<namespace>``) keep a
``tmp_dir`` shared by several hosts or containers safe: a job only judges the processes it can see, those of its
own host and namespace. On an HTCondor execute point the job's scratch directory is its temp dir, and HTCondor
removes it anyway.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from cog_pipeline.core.processes import pid_alive

log = logging.getLogger(__name__)

PREFIX = "cog-pipeline-"


def _host() -> str:
    """This host and process-ID namespace as they appear in a temp dir's name: the host name without ``-`` (the
    name's separator) or ``/``, then the namespace's inode (Linux; 0 where there is none), so that a container
    with its own PIDs never takes another's live process for a dead one."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return (re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "_") + f"_{namespace}"


def private_dir(root: str | Path | None) -> Path:
    """A new directory for one image, readable by this user only (``tempfile.mkdtemp``), named after this host
    and process; raises OSError as mkdtemp does."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{_host()}-{os.getpid()}-", dir=root))


def sweep(root: str | Path | None) -> list[Path]:
    """Remove the directories :func:`private_dir` made in ``root`` (None: the system's temp dir) on this host
    for processes that no longer exist, this user's only; returns them, logging a warning naming them."""
    base = Path(root) if root else Path(tempfile.gettempdir())
    mine = f"{PREFIX}{_host()}-"
    removed: list[Path] = []
    try:
        entries = [entry for entry in os.scandir(base) if entry.name.startswith(mine)]
    except OSError:
        return removed  # no such root yet, or unreadable: the image's own mkdtemp reports it
    for entry in entries:
        pid_text, separator, _random = entry.name[len(mine) :].partition("-")
        if not (separator and pid_text.isdigit() and len(pid_text) < 10):  # Linux: PIDs below 2**22
            continue
        pid = int(pid_text)
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    if removed:
        log.warning(
            "removed %d temp dir(s) in %s left by batch jobs that were killed: %s",
            len(removed),
            base,
            ", ".join(path.name for path in removed),
        )
    return removed
