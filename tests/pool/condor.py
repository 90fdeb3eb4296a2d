"""A real HTCondor personal pool on loopback, started from the prebuilt tarball for the test suite.

The tarball (``COG_PIPELINE_HTCONDOR_TARBALL``, else /work/shared/htcondor/htcondor-25.13.2.tar.zst, else
``<repo>/../shared/htcondor/``; checked against ``SHA256SUMS`` beside it when present) is unpacked into
``base_dir``; every file of the pool (config, logs, spool, execute dirs, sockets) lives there.

Who runs what. The daemons run unprivileged, the way a personal pool runs (the tarball's README:
tested that way). Run by a normal user, the pool is that user's. Run as root (CI), the daemons run
as a dedicated user (``condoruser``, created with ``useradd -m`` if missing; ``COG_PIPELINE_POOL_USER``
picks another), and **the code under test runs as that user too** (``Pool.run`` wraps commands in
``runuser -u USER -- env -i ...``): an unprivileged personal schedd runs every job as its own user,
so that user owns the access point's files, exactly like a person using a personal pool. Root never
submits anything: it only seeds S3, starts/stops the pool and reads results. For that user to run the
project's venv, every directory above the interpreter, the venv and the checkout must be searchable
by it; a directory that is not (e.g. /root, 0700, when the venv's base Python is a pyenv build there)
gets a search-only ACL entry for that user (``setfacl -m u:USER:x DIR``: no listing, no reading,
nobody else), which stays, like the user. Nothing else of the system is changed.

Security: ``use SECURITY : recommended(<pool user>)`` (authentication, encryption and integrity
required; FS/IDTOKENS; READ open to whoever can reach the port), every daemon bound to 127.0.0.1
only (``NETWORK_INTERFACE``, ``BIND_ALL_INTERFACES = False``, no IPv6), one shared port chosen free.
``CONDOR_IDS`` names the pool user so root's own condor tools (debugging by hand) act as that user.

Stopping: ``condor_off -master``, then the master's exit is awaited; every process of the pool
(found by ``base_dir`` in its environment or command line: daemons, starters, jobs) must be gone,
else it is killed and the exit raises. A watchdog process does the killing should this Python
process die without running the context's exit (SIGKILL).

Stdlib only (the watchdog imports this file on its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "25.13.2"
TARBALL_NAME = f"htcondor-{VERSION}.tar.zst"
TARBALL_ENV = "COG_PIPELINE_HTCONDOR_TARBALL"
USER_ENV = "COG_PIPELINE_POOL_USER"
DEFAULT_USER = "condoruser"
REPO = Path(__file__).resolve().parents[2]
#: CPUs the startd advertises (one partitionable slot): the drivers are local-universe jobs (no slot),
#: the batch jobs take one CPU each; 4 lets a run's batches run side by side on a 2-core machine.
NUM_CPUS = 4
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL_LINES = 30


class PoolError(Exception):
    """The pool could not be set up, did not come up, or did not go away cleanly (with log tails)."""


@dataclass
class Pool:
    """A running personal pool and how to talk to it."""

    base_dir: Path
    condor_config: Path
    release_dir: Path
    bin_dir: Path
    sbin_dir: Path
    local_dir: Path
    #: Environment for condor commands and for the code under test: CONDOR_CONFIG, PATH (condor's bin and
    #: sbin, the venv's bin, the system's), HOME (the pool user's), LANG.
    env: dict[str, str]
    user: str
    uid: int
    gid: int
    port: int
    startup_seconds: float = 0.0
    #: What had to be done to the machine for this pool (user created, ACL entries), for the report.
    notes: list[str] = field(default_factory=list)
    #: The watchdog process (it names base_dir on its command line: not a process of the pool).
    watchdog_pid: int = 0

    # ------------------------------------------------------------------ running things as the pool user

    @property
    def as_other_user(self) -> bool:
        """True when commands run through ``runuser`` (the test process is root, the pool is not)."""
        return self.uid != os.geteuid()

    def command(self, argv: Sequence[str], extra_env: dict[str, str] | None = None) -> list[str]:
        """``argv`` with exactly :attr:`env` (+ ``extra_env``), as the pool user."""
        env = {**self.env, **(extra_env or {})}
        wrapped = ["env", "-i", *[f"{k}={v}" for k, v in env.items()], *map(str, argv)]
        if self.as_other_user:
            return [_runuser(), "-u", self.user, "--", *wrapped]
        return wrapped

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120,
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` as the pool user; output captured as text. ``check``: PoolError on a non-zero exit."""
        proc = subprocess.run(
            self.command(argv, extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise PoolError(f"{shlex.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def condor(self, tool: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """One condor command line tool of this pool (``condor_q``, ``condor_history``, ...)."""
        return self.run([tool, *args], check=check, timeout=timeout)

    def query(self, constraint: str = "true", attributes: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Job ads in the queue matching ``constraint`` (``condor_q -json``)."""
        args = ["-allusers", "-constraint", constraint, "-json"]
        if attributes:
            args += ["-attributes", ",".join(attributes)]
        return _json_ads(self.condor("condor_q", *args).stdout)

    def history(self, constraint: str = "true", attributes: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Job ads of finished jobs matching ``constraint`` (``condor_history -json``)."""
        args = ["-constraint", constraint, "-json"]
        if attributes:
            args += ["-attributes", ",".join(attributes)]
        return _json_ads(self.condor("condor_history", *args).stdout)

    def give(self, path: Path) -> Path:
        """Make ``path`` (recursively) owned by the pool user; returns it."""
        path = Path(path)
        for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
            os.lchown(p, self.uid, self.gid)
        return path

    def log_tails(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of every daemon log and of the master's own output."""
        return _tails([self.base_dir / "master.out", *sorted((self.local_dir / "log").glob("*Log*"))], lines)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process of this pool: daemons, starters, shadows, jobs."""
        return pool_processes(self.base_dir, exclude=[self.watchdog_pid])


def _json_ads(text: str) -> list[dict[str, Any]]:
    text = text.strip()
    return json.loads(text) if text else []


def _runuser() -> str:
    found = shutil.which("runuser", path=_SYSTEM_PATH)
    if not found:
        raise PoolError("runuser not found (util-linux)")
    return found


# ------------------------------------------------------------------------------------------ availability


def find_tarball() -> Path | None:
    """The HTCondor tarball: ``$COG_PIPELINE_HTCONDOR_TARBALL``, else the shared folder's, else None."""
    given = os.environ.get(TARBALL_ENV)
    if given:
        return Path(given)
    for candidate in (Path("/work/shared/htcondor") / TARBALL_NAME, REPO.parent / "shared" / "htcondor" / TARBALL_NAME):
        if candidate.is_file():
            return candidate
    return None


def pool_user() -> str:
    """Who runs the daemons (and, as root, the code under test): the current user, or condoruser as root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    return os.environ.get(USER_ENV) or DEFAULT_USER


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def available() -> str | None:
    """Why a personal pool cannot run here, or None."""
    tarball = find_tarball()
    if tarball is None:
        return (
            f"no HTCondor tarball: set {TARBALL_ENV} to {TARBALL_NAME} (built as /work/shared/htcondor/README.md "
            f"says), or put it in /work/shared/htcondor/ or {REPO.parent / 'shared' / 'htcondor'}/"
        )
    if not tarball.is_file():
        return f"{TARBALL_ENV}={tarball}: no such file"
    if not shutil.which("zstd", path=os.environ.get("PATH", "") + os.pathsep + _SYSTEM_PATH):
        return "zstd not installed (needed to unpack the tarball): apt-get install zstd"
    if not shutil.which("tar", path=_SYSTEM_PATH):
        return "tar not installed"
    if sys.platform != "linux":
        return f"the prebuilt HTCondor is for Linux x86_64, not {sys.platform}"
    if os.geteuid() == 0:
        user = pool_user()
        if user == "root":
            return f"{USER_ENV}=root: HTCondor daemons must run as an unprivileged user here"
        if not shutil.which("runuser", path=_SYSTEM_PATH):
            return "running as root, but runuser (util-linux) is missing to run the pool as an unprivileged user"
        if not _user_exists(user) and not shutil.which("useradd", path=_SYSTEM_PATH):
            return f"running as root, user {user} does not exist and useradd is missing to create it"
        blocked = [d for d in _dirs_needed() if not (d.stat().st_mode & stat.S_IXOTH)]
        if blocked and not shutil.which("setfacl", path=_SYSTEM_PATH):
            return (
                f"running as root: the pool user must run {sys.executable}, but "
                f"{', '.join(map(str, blocked))} {'is' if len(blocked) == 1 else 'are'} not searchable by other "
                "users and setfacl is missing to grant that user search access: apt-get install acl"
            )
    return None


def _dirs_needed() -> list[Path]:
    """Every directory the pool user must be able to enter to run this venv's Python and the checkout."""
    targets = {Path(os.path.realpath(sys.executable)), Path(sys.prefix), Path(sys.base_prefix), REPO}
    dirs: set[Path] = set()
    for target in targets:
        start = target if target.is_dir() else target.parent
        dirs.update([start, *start.parents])
    return sorted(dirs)


# ------------------------------------------------------------------------------------------ set-up


def verify_tarball(tarball: Path) -> str:
    """SHA256 of ``tarball``; PoolError if a ``SHA256SUMS`` beside it lists another value for its name."""
    digest = hashlib.sha256()
    with open(tarball, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    sums = tarball.parent / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == tarball.name and parts[0].lower() != actual:
                raise PoolError(f"{tarball}: SHA256 {actual} does not match {sums} ({parts[0]})")
    return actual


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_user(name: str, notes: list[str]) -> pwd.struct_passwd:
    if not _user_exists(name):
        proc = subprocess.run(
            [shutil.which("useradd", path=_SYSTEM_PATH) or "useradd", "-m", "-s", "/bin/sh", name],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 and not _user_exists(name):  # another session may have created it meanwhile
            raise PoolError(f"useradd -m {name} failed: {proc.stderr.strip()}")
        notes.append(f"created user {name} (useradd -m)")
    return pwd.getpwnam(name)


def _grant_search(user: pwd.struct_passwd, notes: list[str]) -> None:
    """Give ``user`` search (x) access to each directory it needs and lacks (ACL entry for that user only)."""
    for directory in _dirs_needed():
        if _can_search(directory, user):
            continue
        setfacl = shutil.which("setfacl", path=_SYSTEM_PATH)
        if not setfacl:
            raise PoolError(f"{user.pw_name} cannot enter {directory} and setfacl is missing: apt-get install acl")
        proc = subprocess.run([setfacl, "-m", f"u:{user.pw_name}:x", str(directory)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PoolError(f"setfacl -m u:{user.pw_name}:x {directory} failed: {proc.stderr.strip()}")
        notes.append(
            f"setfacl -m u:{user.pw_name}:x {directory} (search only, so {user.pw_name} can run {sys.executable})"
        )


def _can_search(directory: Path, user: pwd.struct_passwd) -> bool:
    st = directory.stat()
    if st.st_mode & stat.S_IXOTH:
        return True
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in os.getgrouplist(user.pw_name, user.pw_gid) and st.st_mode & stat.S_IXGRP:
        return True
    # An ACL may already allow it: ask as that user.
    return (
        subprocess.run(
            [_runuser(), "-u", user.pw_name, "--", "test", "-x", str(directory)], capture_output=True
        ).returncode
        == 0
    )


def write_config(
    path: Path, *, release_dir: Path, local_dir: Path, port: int, user: pwd.struct_passwd, num_cpus: int = NUM_CPUS
) -> None:
    """The pool's whole configuration (nothing from /etc/condor): the README's facts for a loopback pool.

    ``num_cpus``: CPUs the startd advertises (more than the machine has for scale runs of tiny jobs)."""
    text = f"""\
# Personal HTCondor {VERSION} pool for cog-pipeline's tests (tests/pool/condor.py). Loopback only.
RELEASE_DIR = {release_dir}
LOCAL_DIR = {local_dir}
LOG = $(LOCAL_DIR)/log
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
LOCK = $(LOCAL_DIR)/lock
RUN = $(LOCAL_DIR)/run
SEC_PASSWORD_DIRECTORY = $(LOCAL_DIR)/passwords.d
SEC_TOKEN_SYSTEM_DIRECTORY = $(LOCAL_DIR)/tokens.d
LOCAL_CONFIG_FILE =
LOCAL_CONFIG_DIR =
CONDOR_IDS = {user.pw_uid}.{user.pw_gid}

use ROLE : Personal
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:{port}
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
USE_SHARED_PORT = True
SHARED_PORT_PORT = {port}
DAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD, STARTD

# The argument is the user the daemons run as (it becomes ALLOW_DAEMON = <user>@* ...).
use SECURITY : recommended({user.pw_name})
use POLICY : ALWAYS_RUN_JOBS
use FEATURE : PartitionableSlot
NUM_CPUS = {num_cpus}

SCHEDD_INTERVAL = 5
# Periodic job expressions (the hold policy's PeriodicRelease/PeriodicRemove) every 5 s, not 60.
PERIODIC_EXPR_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 5
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 10
UPDATE_INTERVAL = 5
RUNBENCHMARKS = 0
"""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)


def _tails(paths: Sequence[Path], lines: int) -> str:
    out = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out) or "(no logs)"


# ------------------------------------------------------------------------------------------ processes


def pool_processes(base_dir: Path, exclude: Sequence[int] = ()) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose environment or command line mentions ``base_dir``."""
    needle = os.fsencode(str(Path(base_dir).resolve()))
    skip = {os.getpid(), *exclude}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    environ = fh.read()
            except OSError:
                environ = b""
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()))
    return found


def _kill_all(base_dir: Path, exclude: Sequence[int] = ()) -> list[tuple[int, str]]:
    """SIGKILL every process of the pool; returns what was found."""
    found = pool_processes(base_dir, exclude)
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def _watchdog(base_dir: str) -> None:
    """Block until stdin closes (the test process ended, however), then kill whatever the pool left."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    for _ in range(3):
        if not _kill_all(Path(base_dir)):
            break
        time.sleep(0.5)


def _start_watchdog(base_dir: Path) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        f"import condor; condor._watchdog({str(base_dir)!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# ------------------------------------------------------------------------------------------ the pool


@contextlib.contextmanager
def personal_pool(base_dir: Path, *, ready_timeout: float = READY_TIMEOUT, num_cpus: int = NUM_CPUS) -> Iterator[Pool]:
    """Unpack, configure and start a personal pool in ``base_dir`` (must exist); stop it on exit.

    ``num_cpus``: CPUs the startd advertises (bench/sec_pool.py uses 32 on a 2-core machine).

    Raises PoolError when :func:`available` finds nothing wrong but the pool cannot be set up or does not
    answer within ``ready_timeout`` s (the message has the daemons' log tails).
    """
    reason = available()
    if reason:
        raise PoolError(reason)
    base_dir = Path(base_dir).resolve()
    notes: list[str] = []
    user = pwd.getpwuid(os.geteuid()) if os.geteuid() != 0 else _ensure_user(pool_user(), notes)
    if os.geteuid() == 0:
        _grant_search(user, notes)
    tarball = find_tarball()
    assert tarball is not None
    verify_tarball(tarball)
    proc = subprocess.run(
        ["tar", "-I", "zstd", "--no-same-owner", "-xf", str(tarball), "-C", str(base_dir)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PoolError(f"cannot unpack {tarball}: {proc.stderr.strip()}")
    release_dir = base_dir / "condor-strip"
    if not (release_dir / "sbin" / "condor_master").is_file():
        raise PoolError(f"{tarball} did not unpack to condor-strip/ with sbin/condor_master")
    base_dir.chmod(0o755)  # the pool user reads the release and the config, root-owned
    local_dir = base_dir / "local"
    for sub in ("log", "spool", "execute", "lock", "run", "passwords.d", "tokens.d"):
        (local_dir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("passwords.d", "tokens.d"):
        (local_dir / sub).chmod(0o700)
    for p in [local_dir, *local_dir.rglob("*")]:
        os.lchown(p, user.pw_uid, user.pw_gid)
    port = free_port()
    config = base_dir / "condor_config"
    write_config(config, release_dir=release_dir, local_dir=local_dir, port=port, user=user, num_cpus=num_cpus)
    bin_dir, sbin_dir = release_dir / "bin", release_dir / "sbin"
    env = {
        "CONDOR_CONFIG": str(config),
        "PATH": os.pathsep.join([str(bin_dir), str(sbin_dir), str(Path(sys.executable).parent), _SYSTEM_PATH]),
        "HOME": user.pw_dir,
        "LANG": "C.UTF-8",
    }
    pool = Pool(
        base_dir=base_dir,
        condor_config=config,
        release_dir=release_dir,
        bin_dir=bin_dir,
        sbin_dir=sbin_dir,
        local_dir=local_dir,
        env=env,
        user=user.pw_name,
        uid=user.pw_uid,
        gid=user.pw_gid,
        port=port,
        notes=notes,
    )
    # The code under test must run as the pool user: check that it can before starting anything.
    check = pool.run([sys.executable, "-c", "import cog_pipeline, snakemake, htcondor2, rasterio"], check=False)
    if check.returncode != 0:
        raise PoolError(f"{pool.user} cannot run {sys.executable} with the project's packages:\n{check.stderr}")

    watchdog = _start_watchdog(base_dir)
    pool.watchdog_pid = watchdog.pid
    started = time.monotonic()
    master = None
    try:
        with open(base_dir / "master.out", "wb") as out:
            master = subprocess.Popen(
                pool.command(["condor_master", "-f", "-pidfile", str(local_dir / "run" / "master.pid")]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_ready(pool, master, ready_timeout, num_cpus)
        pool.startup_seconds = time.monotonic() - started
        yield pool
    finally:
        try:
            _stop(pool, master)
        finally:
            with contextlib.suppress(OSError):
                watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=10)


def _wait_ready(pool: Pool, master: subprocess.Popen, timeout: float, num_cpus: int = NUM_CPUS) -> None:
    """Until the collector lists the startd's slot with all its CPUs and the schedd answers condor_q."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise PoolError(f"condor_master exited with status {master.returncode} while starting\n{pool.log_tails()}")
        status = pool.condor("condor_status", "-af", "Cpus", check=False, timeout=30)
        queue = pool.condor("condor_q", "-totals", check=False, timeout=30)
        cpus = sum(int(x) for x in status.stdout.split() if x.isdigit())
        if status.returncode == 0 and cpus >= num_cpus and queue.returncode == 0:
            return
        last = (
            f"condor_status: {status.returncode} {status.stdout.strip()} {status.stderr.strip()}\n"
            f"condor_q: {queue.returncode} {queue.stderr.strip()}"
        )
        time.sleep(0.5)
    raise PoolError(f"the pool did not answer within {timeout:.0f} s; last:\n{last}\n{pool.log_tails()}")


def _stop(pool: Pool, master: subprocess.Popen | None) -> None:
    """condor_off -master, wait for the master; then nothing of the pool may be left (killed and reported)."""
    if master is not None and master.poll() is None:
        pool.condor("condor_off", "-master", check=False, timeout=30)
        try:
            master.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                master.wait(timeout=10)
    deadline = time.monotonic() + 15
    left = pool.processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = pool.processes()
    if left:
        _kill_all(pool.base_dir, exclude=[pool.watchdog_pid])
        raise PoolError(
            "processes of the pool were still running after condor_off -master (killed):\n"
            + "\n".join(f"  {pid} {cmd}" for pid, cmd in left)
            + "\n"
            + pool.log_tails()
        )
