"""A real Ceph RADOS Gateway (S3 server) on loopback, bootstrapped from nothing for the test suite.

Ceph 16 (Pacific) RGW has no stand-alone backend, so this builds a one-node RADOS cluster much as
upstream ``src/vstart.sh`` does: one monitor, one BlueStore OSD on a sparse file and one ``radosgw``
serving HTTP and HTTPS (a throw-away CA signs its certificate). No manager daemon: the gateway does not
need one, and it would cost ~300 MB. Every file (config, keyrings, data, sockets, pid files, logs) lives
in ``base_dir``; nothing touches ``/etc/ceph`` or ``/var/lib/ceph``.

Daemons run in the foreground, each in its own session (pid files in ``base_dir/run``). They are killed
when the context exits, by an ``atexit`` handler, and, should this Python process die without either
(SIGKILL, SIGTERM), by a watchdog process that notices its pipe closing and also removes ``base_dir``.

Manual use: ``python -m tests.servers.rgw up [DIR]`` prints the server's fields (keys included) as JSON
and serves until interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from botocore.client import BaseClient

_BINARIES = ("ceph", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "rados", "monmaptool", "openssl")
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
_USER = "tester"
_RGW = "client.rgw.gw"
_DAEMONS = ("mon.a", "osd.0", _RGW)
_TAIL_LINES = 40


class RGWUnavailable(Exception):
    """Why RGW cannot run here: binaries missing, or a bootstrap step failed (with the failing daemon's log tail)."""


@dataclass(frozen=True)
class RGWServer:
    """A running gateway: its endpoints, the CA its HTTPS certificate verifies against, and an S3 user's keys."""

    http_url: str
    https_url: str
    ca_bundle: Path
    access_key: str
    secret_key: str = field(repr=False)
    version: str
    base_dir: Path

    def admin_client(self, https: bool = True) -> BaseClient:
        """A new boto3 S3 client with the user's keys: path-style, us-east-1, checksums only when required."""
        return _cluster_of(self).client(self, https)

    def reset(self) -> None:
        """Delete every bucket of the user, with all object versions, delete markers and unfinished uploads."""
        client = _cluster_of(self).reset_client(self)
        buckets = [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]
        if buckets:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(buckets))) as pool:
                list(pool.map(lambda name: _empty_and_delete(client, name), buckets))

    def restart_gateway(self) -> None:
        """Restart radosgw only (same ports, keys and data); returns once it answers again."""
        _cluster_of(self).restart_rgw()


def available() -> str | None:
    """None if the Ceph binaries RGW needs are installed, else the reason it cannot run."""
    missing = [name for name in _BINARIES if shutil.which(name, path=_SEARCH_PATH) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install radosgw ceph-mon ceph-osd ceph-common openssl)"
    return None


@contextlib.contextmanager
def rgw_server(base_dir: Path, timeout: float = 120) -> Iterator[RGWServer]:
    """Bootstrap a cluster and gateway in ``base_dir`` (absent or empty), yield it, then kill it and remove the dir."""
    reason = available()
    if reason:
        raise RGWUnavailable(reason)
    cluster = _Cluster(Path(base_dir).absolute())
    try:
        yield cluster.bootstrap(timeout)
    finally:
        cluster.stop()


# --- reset ------------------------------------------------------------------------------------------------------------


def _empty_and_delete(client: Any, bucket: str) -> None:
    """Abort the unfinished uploads of ``bucket``, delete all its versions and markers, then the bucket."""

    def code(error: ClientError) -> str:
        return str(error.response.get("Error", {}).get("Code"))

    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                with contextlib.suppress(ClientError):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for attempt in range(5):
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
                doomed = [
                    {"Key": entry["Key"], "VersionId": entry["VersionId"]}
                    for entry in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if doomed:
                    client.delete_objects(
                        Bucket=bucket, Delete={"Objects": doomed, "Quiet": True}, BypassGovernanceRetention=True
                    )
            try:
                client.delete_bucket(Bucket=bucket)
                return
            except ClientError as error:
                if code(error) != "BucketNotEmpty" or attempt == 4:
                    raise
                time.sleep(0.2)
    except ClientError as error:
        if code(error) not in ("NoSuchBucket", "404"):
            raise


# --- processes --------------------------------------------------------------------------------------------------------

# Reads "add PGID", "del PGID", "rm PATH" and "quit" lines; at end of input without "quit" (the parent died),
# kills the process groups still listed and removes the paths.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
groups, paths = set(), []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "add":
        groups.add(int(arg))
    elif cmd == "del":
        groups.discard(int(arg))
    elif cmd == "rm":
        paths.append(arg)
    elif cmd == "quit":
        sys.exit(0)
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
deadline = time.monotonic() + 15
while groups and time.monotonic() < deadline:
    for group in list(groups):
        try:
            os.killpg(group, 0)
        except OSError:
            groups.discard(group)
    time.sleep(0.1)
for path in paths:
    shutil.rmtree(path, ignore_errors=True)
"""

_CLUSTERS: dict[Path, _Cluster] = {}
_CLUSTERS_LOCK = threading.Lock()


def _cluster_of(server: RGWServer) -> _Cluster:
    with _CLUSTERS_LOCK:
        cluster = _CLUSTERS.get(server.base_dir)
    if cluster is None:
        raise RGWUnavailable(f"the RGW server in {server.base_dir} was stopped")
    return cluster


@atexit.register
def _stop_all() -> None:
    with _CLUSTERS_LOCK:
        clusters = list(_CLUSTERS.values())
    for cluster in clusters:
        cluster.stop()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _cephx_key() -> str:
    """A new cephx secret, in the format of ``ceph-authtool --gen-print-key``."""
    return base64.b64encode(struct.pack("<hiih", 1, int(time.time()), 0, 16) + os.urandom(16)).decode()


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _answers(url: str, ca: Path | None = None) -> bool:
    """Whether the gateway answers an anonymous GET with S3 XML (200 or 403)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status == 200 and b"<?xml" in response.read(200)
    except urllib.error.HTTPError as error:
        return error.code == 403 and b"<?xml" in error.read(200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


class _Cluster:
    """The processes and files of one instance."""

    def __init__(self, base: Path) -> None:
        if re.search(r"[\s$#;=,\[\]]", str(base)):
            raise ValueError(f"base_dir may not contain whitespace or any of $#;=,[]: {base}")
        if base.exists() and (not base.is_dir() or any(base.iterdir())):
            raise ValueError(f"base_dir must be absent or an empty directory: {base}")
        self.base = base
        self.conf = base / "ceph.conf"
        self.logs = base / "log"
        self.ca = base / "tls" / "ca.pem"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CEPH_", "PYTHON")) and k != "VIRTUAL_ENV"}
        self.env["PATH"] = _SEARCH_PATH
        self.lock = threading.RLock()
        self.stopped = False
        self.session: Any = None
        self.plain_client: Any = None
        self.ports: dict[str, int] = {}
        self.fsid = str(uuid.uuid4())
        self.watchdog: subprocess.Popen[bytes] | None = None

    # -- processes

    def tell_watchdog(self, line: str) -> None:
        if self.watchdog and self.watchdog.stdin and self.watchdog.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.watchdog.stdin.write(line.encode() + b"\n")
                self.watchdog.stdin.flush()

    def run(self, args: Sequence[str], timeout: float = 60, secret: bool = False) -> str:
        """Run a command to completion and return its stdout; everything goes to log/commands.log (not a secret)."""
        started = time.monotonic()
        try:
            result = subprocess.run(
                args,
                check=False,
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            result = subprocess.CompletedProcess(args, -9, "", f"(timed out after {timeout:.0f} s)")
        with (self.logs / "commands.log").open("a") as log:
            log.write(f"$ {' '.join(args)}  # rc={result.returncode} {time.monotonic() - started:.2f} s\n")
            log.write("(stdout not logged)\n" if secret else result.stdout or "")
            log.write(result.stderr or "")
        if result.returncode != 0:
            raise RGWUnavailable(
                f"{' '.join(args[:4])} ... failed (rc={result.returncode}):\n"
                + "\n".join((result.stderr or "").splitlines()[-_TAIL_LINES:])
            )
        return result.stdout

    def ceph(self, *args: str, timeout: float = 30) -> Any:
        """Run a ``ceph`` CLI command as client.admin and parse its JSON output."""
        out = self.run(
            ["ceph", "-c", str(self.conf), "--connect-timeout", str(int(timeout)), *args, "--format", "json"],
            timeout=timeout + 5,
        )
        return json.loads(out) if out.strip() else None

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a process in its own session, output to log/<name>.out, pid in run/<name>.pid."""
        with (self.logs / f"{name}.out").open("ab") as out:
            proc = subprocess.Popen(
                args,
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.tell_watchdog(f"add {proc.pid}")
        (self.base / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def start_daemon(self, name: str) -> None:
        kind, ident = name.split(".", 1)
        if kind == "client":
            self.spawn(name, ["radosgw", "-f", "-c", str(self.conf), "-n", name])
        else:
            self.spawn(name, [f"ceph-{kind}", "-f", "-c", str(self.conf), "-i", ident])

    def kill(self, name: str, grace: float = 0) -> None:
        """Stop one process (SIGTERM first when ``grace``), SIGKILL its group and the pid in its pid file, reap it."""
        proc = self.procs.pop(name, None)
        pid_file = self.base / "run" / f"{name}.pid"
        pids = set()
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pid_file.read_text()))
        if proc:  # never signal a pid already reaped: it may belong to someone else by now
            pids.discard(proc.pid)
            if proc.poll() is None:
                pids.add(proc.pid)
        if proc and grace and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        if proc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            self.tell_watchdog(f"del {proc.pid}")
        pid_file.unlink(missing_ok=True)

    def failure(self, what: str, *names: str) -> RGWUnavailable:
        """Build an RGWUnavailable saying ``what`` failed, with the log tails of the named (or all) daemons."""
        parts = [what]
        for name in names or tuple(self.procs):
            proc = self.procs.get(name)
            state = "not started" if proc is None else "running" if proc.poll() is None else f"exit {proc.returncode}"
            parts.append(f"--- {name} ({state})")
            for log in (self.logs / f"{name}.log", self.logs / f"{name}.out"):
                text = _tail(log)
                if text.strip():
                    parts.append(f"[{log.name}]\n{text}")
        return RGWUnavailable("\n".join(parts))

    def wait_for(self, what: str, ready: Callable[[], object], deadline: float, *names: str) -> None:
        """Poll ``ready()`` until true; RGWUnavailable (with log tails) if a daemon dies or time runs out."""
        last = ""
        while True:
            for name, proc in list(self.procs.items()):
                if name in _DAEMONS and proc.poll() is not None:
                    raise self.failure(f"{name} exited with status {proc.returncode} while waiting for {what}", name)
            try:
                if ready():
                    return
            except (RGWUnavailable, OSError, ValueError, KeyError) as error:
                last = (str(error).splitlines() or [type(error).__name__])[0]
            if time.monotonic() > deadline:
                raise self.failure(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""), *names)
            time.sleep(0.25)

    # -- bootstrap

    def bootstrap(self, timeout: float) -> RGWServer:
        deadline = time.monotonic() + timeout
        with _CLUSTERS_LOCK:
            if self.base in _CLUSTERS:
                self.stopped = True  # not ours to stop
                raise ValueError(f"an RGW server already runs in {self.base}")
            _CLUSTERS[self.base] = self
        for sub in ("log", "run", "crash", "mon/a", "osd/0", "rgw", "tls"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.tell_watchdog(f"rm {self.base}")
        self.ports = dict(zip(("mon_v2", "mon_v1", "http", "https"), _free_ports(4), strict=True))
        osd_uuid = str(uuid.uuid4())
        self._write_tls()
        self._write_conf()
        self._write_keyring()

        monmap = str(self.base / "monmap")
        self.run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{self.ports['mon_v2']},v1:127.0.0.1:{self.ports['mon_v1']}]",
                monmap,
            ]
        )
        self.run(
            [
                "ceph-mon",
                "-c",
                str(self.conf),
                "-i",
                "a",
                "--mkfs",
                "--monmap",
                monmap,
                "--keyring",
                str(self.base / "keyring"),
            ]
        )
        self.start_daemon("mon.a")
        # BlueStore's mkfs needs no monitor: it runs while the monitor starts.
        mkfs = self.spawn(
            "osd-mkfs",
            ["ceph-osd", "-f", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, "--no-mon-config"],
        )
        self.wait_for(
            "monitor quorum", lambda: "a" in self.ceph("quorum_status", timeout=5)["quorum_names"], deadline, "mon.a"
        )
        self.ceph("osd", "new", osd_uuid, "0")
        self.wait_for("ceph-osd --mkfs", lambda: mkfs.poll() is not None, deadline, "osd-mkfs")
        if mkfs.returncode != 0:
            raise self.failure(f"ceph-osd --mkfs failed with status {mkfs.returncode}", "osd-mkfs", "osd.0")
        self.kill("osd-mkfs")
        self.start_daemon("osd.0")
        self.wait_for(
            "osd.0 up", lambda: self.ceph("osd", "stat", timeout=5)["num_up_osds"] == 1, deadline, "osd.0", "mon.a"
        )
        self.start_gateway(deadline, "the gateway", retry_ports=True)
        http, https = self.ports["http"], self.ports["https"]
        created = self.run(
            ["radosgw-admin", "-c", str(self.conf), "user", "create", "--uid", _USER, "--display-name", _USER],
            secret=True,
            timeout=max(10.0, deadline - time.monotonic()),
        )
        keys = json.loads(created)["keys"][0]
        version = self.run(["radosgw", "--version"])
        match = re.search(r"ceph version (\S+)", version)
        server = RGWServer(
            http_url=f"http://127.0.0.1:{http}",
            https_url=f"https://127.0.0.1:{https}",
            ca_bundle=self.ca,
            access_key=keys["access_key"],
            secret_key=keys["secret_key"],
            version=match.group(1) if match else version.strip(),
            base_dir=self.base,
        )
        self._warm_up(server)
        if time.monotonic() > deadline:
            raise self.failure(f"bootstrap took longer than {timeout} s", _RGW)
        return server

    def start_gateway(self, deadline: float, what: str, retry_ports: bool = False) -> None:
        """Start radosgw and wait until it answers over HTTP and HTTPS (on new ports if ours were taken meanwhile)."""
        for attempt in range(3):
            self.start_daemon(_RGW)
            try:
                self.wait_for(
                    f"{what} over HTTP",
                    lambda: _answers(f"http://127.0.0.1:{self.ports['http']}/"),
                    deadline,
                    _RGW,
                    "osd.0",
                )
                break
            except RGWUnavailable:
                proc = self.procs.get(_RGW)
                if not retry_ports or attempt == 2 or proc is None or proc.returncode != errno.EADDRINUSE:
                    raise
            self.kill(_RGW)
            self.drop_stale_watchers()
            self.ports["http"], self.ports["https"] = _free_ports(2)
            self._write_conf()
        self.wait_for(
            f"{what} over HTTPS", lambda: _answers(f"https://127.0.0.1:{self.ports['https']}/", self.ca), deadline, _RGW
        )

    def drop_stale_watchers(self) -> None:
        """Blocklist the watches a dead radosgw left on its control objects.

        Otherwise every metadata change (bucket creation, ...) waits for them to time out: 30 s.
        """
        with contextlib.suppress(RGWUnavailable):
            out = self.run(
                ["rados", "-c", str(self.conf), "-p", "default.rgw.control", "listwatchers", "notify.0"], timeout=15
            )
            for address in re.findall(r"watcher=(\S+)", out):
                self.ceph("osd", "blocklist", "add", address)

    def _write_tls(self) -> None:
        """Make a throw-away CA and a server certificate for IP 127.0.0.1 signed by it."""
        tls = self.base / "tls"
        ext = tls / "server.ext"
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n"
        )
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self.run(
            [
                "openssl",
                "req",
                "-x509",
                *key,
                "-keyout",
                str(tls / "ca.key"),
                "-out",
                str(self.ca),
                "-days",
                "30",
                "-subj",
                "/CN=cog-pipeline test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )
        self.run(
            [
                "openssl",
                "req",
                "-new",
                *key,
                "-keyout",
                str(tls / "key.pem"),
                "-out",
                str(tls / "server.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ]
        )
        self.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(tls / "server.csr"),
                "-CA",
                str(self.ca),
                "-CAkey",
                str(tls / "ca.key"),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                str(ext),
                "-out",
                str(tls / "cert.pem"),
            ]
        )

    def _write_conf(self) -> None:
        b, p, fsid = self.base, self.ports, self.fsid
        # A unix socket path must fit in sun_path (108 bytes); where it would not, admin sockets are turned off.
        asok = f"{b}/run/$name.asok" if len(f"{b}/run/{_RGW}.asok") < 100 else ""
        self.conf.write_text(f"""\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{p["mon_v2"]},v1:127.0.0.1:{p["mon_v1"]}]
public addr = 127.0.0.1
public network = 127.0.0.1/32
cluster network = 127.0.0.1/32
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {b}/keyring
run dir = {b}/run
crash dir = {b}/crash
log file = {b}/log/$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {b}/log/cluster.log
mon data = {b}/mon/$id
mon data avail warn = 2
mon data avail crit = 1
mon allow pool delete = true
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon osd nearfull ratio = .99
mon osd backfillfull ratio = .99
mon osd full ratio = .99
osd failsafe full ratio = .99
# Every pool RGW creates costs two monitor proposals, each up to 1 s apart by default: 22 s -> 6 s bootstrap.
paxos propose interval = 0.05
paxos min wait = 0.01
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0

[mon]
admin socket = {asok}

[osd]
admin socket = {asok}
osd data = {b}/osd/$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {30 * 1024**3}
bluestore fsck on mkfs = false
osd memory target = {896 * 1024**2}

[{_RGW}]
admin socket = {asok}
rgw data = {b}/rgw
rgw frontends = beast endpoint=127.0.0.1:{p["http"]} ssl_endpoint=127.0.0.1:{p["https"]} \
ssl_certificate={b}/tls/cert.pem ssl_private_key={b}/tls/key.pem
rgw thread pool size = 64
rgw override bucket index max shards = 1
rgw dynamic resharding = false
rgw enable usage log = false
rgw crypt require ssl = false
""")

    def _write_keyring(self) -> None:
        """Write one keyring with every entity's key and caps: ``ceph-mon --mkfs`` imports them all."""
        caps = {
            "mon.": {"mon": "allow *"},
            "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"},
            "osd.0": {"mon": "allow profile osd", "mgr": "allow profile osd", "osd": "allow *"},
            _RGW: {"mon": "allow rw", "osd": "allow rwx", "mgr": "allow rw"},
        }
        text = ""
        for entity, entity_caps in caps.items():
            text += f"[{entity}]\n\tkey = {_cephx_key()}\n"
            text += "".join(f'\tcaps {kind} = "{cap}"\n' for kind, cap in entity_caps.items())
        path = self.base / "keyring"
        path.touch(mode=0o600)
        path.write_text(text)

    def _warm_up(self, server: RGWServer) -> None:
        """Make RGW create its bucket index, data and multipart pools now (seconds on a fresh cluster)."""
        client = self.client(server, https=False)
        bucket = f"warm-up-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"warm")
        upload = client.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
        client.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"part")
        client.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload)
        client.delete_object(Bucket=bucket, Key="k")
        client.delete_bucket(Bucket=bucket)

    # -- clients

    def client(self, server: RGWServer, https: bool) -> BaseClient:
        config = Config(
            region_name="us-east-1",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        )
        with self.lock:
            if self.session is None:
                self.session = boto3.session.Session()
            return self.session.client(
                "s3",
                endpoint_url=server.https_url if https else server.http_url,
                aws_access_key_id=server.access_key,
                aws_secret_access_key=server.secret_key,
                verify=str(server.ca_bundle) if https else None,
                config=config,
            )

    def reset_client(self, server: RGWServer) -> Any:
        with self.lock:
            if self.plain_client is None:
                self.plain_client = self.client(server, https=False)
            return self.plain_client

    # -- restart and stop

    def restart_rgw(self, timeout: float = 60) -> None:
        with self.lock:
            if self.stopped:
                raise RGWUnavailable(f"the RGW server in {self.base} was stopped")
            self.kill(_RGW, grace=5)
            self.drop_stale_watchers()
            self.start_gateway(time.monotonic() + timeout, "the restarted gateway")

    def stop(self) -> None:
        """Kill every process (the data is thrown away: no graceful shutdown needed), then remove base_dir."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            for proc in self.procs.values():  # signal all first, reap afterwards
                if proc.poll() is None:
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)
            for name in [*self.procs, *_DAEMONS]:
                self.kill(name)
            if self.plain_client is not None:
                with contextlib.suppress(Exception):
                    self.plain_client.close()
            shutil.rmtree(self.base, ignore_errors=True)
            if self.watchdog is not None:
                self.tell_watchdog("quit")
                with contextlib.suppress(OSError):
                    if self.watchdog.stdin:
                        self.watchdog.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.watchdog.wait(5)
        with _CLUSTERS_LOCK:
            if _CLUSTERS.get(self.base) is self:
                del _CLUSTERS[self.base]


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.rgw", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a server, print its fields (keys included) as JSON, serve until killed")
    up.add_argument("dir", nargs="?", type=Path, help="base directory, absent or empty (default: a new temp dir)")
    up.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"RGW unavailable: {reason}", file=sys.stderr)
        return 2
    base = args.dir or Path(tempfile.mkdtemp(prefix="rgw-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:
        with rgw_server(base, args.timeout) as server:
            fields = {key: str(value) for key, value in dataclasses.asdict(server).items()}
            print(
                json.dumps({**fields, "bootstrap_seconds": round(time.monotonic() - started, 1)}, indent=2), flush=True
            )
            while True:
                time.sleep(3600)
    except RGWUnavailable as error:
        print(f"RGW unavailable: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(_main())
