"""What every fault test needs: a scenario in the buckets, ticks (in process or as a killable
process), and one strict check of the end state that also feeds the suite's figures."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.control.tick import TickOptions, tick
from cog_pipeline.core import crash as crash_module
from cog_pipeline.core.logs import configure_cli
from cog_pipeline.storage.s3 import S3Settings
from faults.tickproc import result_json

TICKPROC = Path(__file__).with_name("tickproc.py")
#: The benchmarks' launcher: a small parent process, so the peak RSS it reports is the measured tree's own.
LAUNCHER = Path(__file__).resolve().parents[2] / "bench" / "launch.py"
OUTCOME = re.compile(r"^(?P<stem>.*)(?P<kind>processed|failed|errors)-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)


@dataclass
class Figures:
    """Counts accumulated over the whole fault suite (written to tests/.fault-figures.json)."""

    fault_kinds: dict[str, set[str]] = field(
        default_factory=lambda: {k: set() for k in ("s3", "crash", "concurrency", "resources", "input", "secrets")}
    )
    s3_faults_injected: Counter = field(default_factory=Counter)
    runs: int = 0
    rows_processed: int = 0
    rows_failed: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    input_objects_checked: int = 0
    input_objects_changed: int = 0
    outputs_checked: int = 0
    partial_outputs: int = 0
    incomplete_multipart_uploads: int = 0
    secret_checks: int = 0
    secret_leaks: int = 0
    tests: int = 0
    bounds: dict[str, dict[str, float]] = field(default_factory=dict)

    def kind(self, family: str, name: str) -> None:
        self.fault_kinds[family].add(name)

    def as_json(self) -> dict[str, Any]:
        kinds = {k: sorted(v) for k, v in self.fault_kinds.items() if k != "secrets"}
        return {
            "fault_kinds_injected": sum(len(v) for v in kinds.values()),
            "fault_kinds": kinds,
            "secret_channels_checked": sorted(self.fault_kinds["secrets"]),
            "s3_faults_injected": sum(self.s3_faults_injected.values()),
            "s3_faults_by_operation_and_kind": {
                f"{op}/{kind}": n for (op, kind), n in sorted(self.s3_faults_injected.items())
            },
            "runs_executed": self.runs,
            "rows_processed": self.rows_processed,
            "rows_failed_with_reason": self.rows_failed,
            "rows_lost": self.rows_lost,
            "rows_accounted_twice": self.rows_duplicated,
            "input_objects_checked": self.input_objects_checked,
            "input_objects_changed": self.input_objects_changed,
            "output_objects_checked": self.outputs_checked,
            "partial_outputs_found": self.partial_outputs,
            "incomplete_multipart_uploads_left": self.incomplete_multipart_uploads,
            "secret_checks": self.secret_checks,
            "secret_leaks_found": self.secret_leaks,
            "tests": self.tests,
            "measured_bounds": self.bounds,
        }

    def absorb(self, data: dict[str, Any]) -> None:
        """Add the figures of another process (its ``as_json()``): one pytest-xdist worker's share of the suite."""
        for family, names in data["fault_kinds"].items():
            self.fault_kinds.setdefault(family, set()).update(names)
        self.fault_kinds["secrets"].update(data["secret_channels_checked"])
        for op_kind, count in data["s3_faults_by_operation_and_kind"].items():
            op, _, kind = op_kind.partition("/")
            self.s3_faults_injected[(op, kind)] += count
        for attr, key in _COUNTS.items():
            setattr(self, attr, getattr(self, attr) + data[key])
        self.bounds.update(data["measured_bounds"])

    def write(self, path: Path, run: str | None = None) -> None:
        """Write the figures to ``path``; with ``run`` (the pytest-xdist run id) add those that another worker of
        the same run already wrote there (under a lock), so the file holds the whole suite's."""
        with open(path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            total = Figures()
            total.absorb(self.as_json())
            if run is not None and text.strip():
                try:
                    earlier = json.loads(text)
                except ValueError:
                    earlier = {}
                if earlier.get("run") == run:
                    total.absorb(earlier)
            data = total.as_json()
            data["written"] = time.strftime("%Y-%m-%d %H:%M:%S")
            if run is not None:
                data["run"] = run
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(data, indent=2) + "\n")


#: Figures attribute -> its key in ``Figures.as_json()``, for the plain counts.
_COUNTS = {
    "runs": "runs_executed",
    "rows_processed": "rows_processed",
    "rows_failed": "rows_failed_with_reason",
    "rows_lost": "rows_lost",
    "rows_duplicated": "rows_accounted_twice",
    "input_objects_checked": "input_objects_checked",
    "input_objects_changed": "input_objects_changed",
    "outputs_checked": "output_objects_checked",
    "partial_outputs": "partial_outputs_found",
    "incomplete_multipart_uploads": "incomplete_multipart_uploads_left",
    "secret_checks": "secret_checks",
    "secret_leaks": "secret_leaks_found",
    "tests": "tests",
}


def rows(text: str) -> list[list[str]]:
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))  # the 10 MB-line case
    return [r for r in csv.reader(io.StringIO(text)) if r]


def make_tif(
    path: Path,
    width: int = 32,
    height: int = 32,
    count: int = 1,
    dtype: str = "uint8",
    seed: int = 0,
    georef: bool = True,
    **extra: Any,
) -> Path:
    """A small GeoTIFF with random pixels (distinct per seed)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, size=(count, height, width)).astype(dtype)
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, **extra)
    if georef:
        profile.update(crs="EPSG:32615", transform=Affine(1, 0, 500000, 0, -1, 5000000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def reap(pid: int, timeout: float, what: str, stderr: Path | None = None) -> int:
    """Wait for the forked child ``pid`` (a session leader) and return its exit code (-N: killed by signal N); after
    ``timeout`` seconds kill its process group and fail, naming ``what`` (and the end of ``stderr``)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            tail = f":\n{stderr.read_text()[-4000:]}" if stderr else ""
            raise AssertionError(f"{what} did not end in {timeout} s{tail}")
        time.sleep(0.02)


def die_in_fork(step: str, work: Callable[[], object], timeout: float = 240) -> None:
    """Run ``work`` in a forked child (a session of its own) whose crash point ``step`` is armed, for it and
    every process it starts: at ``step`` the child's whole process group is SIGKILLed, as the host dying there
    would. A fork imports nothing again, so the crashed tick costs no Python start-up. Fails unless the child
    died by that SIGKILL; returns once the child is reaped."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.setsid()
            os.environ["COG_PIPELINE_CRASH_AT"] = step  # for Snakemake and its jobs
            crash_module._AT = step  # read at import by this process's modules
            crash_module._seen.clear()
            work()
        except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
            traceback.print_exc()
            code = 2
        os._exit(code)
    code = reap(pid, timeout, f"the tick armed to crash at {step}")
    assert code == -signal.SIGKILL, f"did not crash at {step}: exit status {code} (3: the step was never reached)"


@dataclass
class ForkedTick:
    """A tick running in a forked child (:meth:`World.fork_tick`); ``communicate`` as subprocess.Popen's."""

    pid: int
    out: Path
    err: Path
    returncode: int | None = None

    @classmethod
    def start(cls, opts: TickOptions, scratch: Path) -> ForkedTick:
        out, err = (Path(tempfile.mkstemp(dir=scratch, suffix=suffix)[1]) for suffix in (".out", ".err"))
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 2
            try:
                os.setsid()
                for fd, path in ((1, out), (2, err)):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's whole life
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                logging.getLogger().handlers.clear()  # pytest's capturing handlers: the child logs as tickproc
                configure_cli()
                result = tick(opts)
                print(result_json(result))
                code = result.exit_code
            except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return cls(pid, out, err)

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        if self.returncode is None:
            self.returncode = reap(self.pid, timeout, "the forked tick", self.err)
        return self.out.read_text(), self.err.read_text()


class World:
    """Buckets seeded through a separate client, the code under test talking through the fault proxy."""

    def __init__(
        self,
        seed,
        proxy,
        key_files,
        tmp_path: Path,
        figures: Figures,
        input_bucket: str,
        output_bucket: str,
        settings: S3Settings | None = None,
    ):
        self.seed, self.proxy, self.figures = seed, proxy, figures
        self.tmp = tmp_path
        self.input_bucket, self.output_bucket = input_bucket, output_bucket
        self.key_files = key_files
        self.settings = settings or S3Settings(
            endpoint_url=proxy.endpoint, access_key_file=str(key_files[0]), secret_key_file=str(key_files[1])
        )
        self.workdir = tmp_path / "work"
        self.inputs: dict[str, tuple[str, str]] = {}
        self.scratch = tmp_path / "scratch"
        self.scratch.mkdir(exist_ok=True)

    # -------------------------------------------------------------------------------- seeding
    def put(self, key: str, data: bytes | Path) -> None:
        body = data.read_bytes() if isinstance(data, Path) else data
        self.seed.put_object(Bucket=self.input_bucket, Key=key, Body=body)

    def image(self, key: str, **kw: Any) -> str:
        """Upload a generated GeoTIFF at ``key``."""
        path = make_tif(self.scratch / f"img-{len(list(self.scratch.iterdir()))}.tif", **kw)
        self.put(key, path)
        return key

    def manifest(self, key: str, lines: list[str] | bytes) -> None:
        body = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode("utf-8")
        self.put(key, body)

    def snapshot(self) -> None:
        """Remember every input object that is not a manifest (the images), to prove none changes."""
        self.inputs = {}
        for page in self.seed.get_paginator("list_objects_v2").paginate(Bucket=self.input_bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".csv") and not obj["Key"].startswith(".cog-pipeline/"):
                    body = self.seed.get_object(Bucket=self.input_bucket, Key=obj["Key"])["Body"].read()
                    self.inputs[obj["Key"]] = (obj["ETag"], hashlib.sha256(body).hexdigest())

    # -------------------------------------------------------------------------------- running
    def options(self, **kw: Any) -> TickOptions:
        overrides = kw.pop("overrides", {})
        workdir = kw.pop("workdir", self.workdir)
        settings = kw.pop("settings", self.settings)
        return TickOptions(
            input_bucket=self.input_bucket,
            output_bucket=self.output_bucket,
            settings=settings,
            workdir=workdir,
            run_overrides=overrides,
            **kw,
        )

    def tick(self, **kw: Any):
        self.figures.runs += 1
        return tick(self.options(**kw))

    def spawn(
        self,
        *,
        crash_at: str | None = None,
        workdir: Path | None = None,
        overrides: dict | None = None,
        options: dict | None = None,
        env: dict | None = None,
        settings: S3Settings | None = None,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        rusage_file: Path | None = None,
    ) -> subprocess.Popen:
        """A tick in its own session (so a crash kills its whole process tree and nothing else); with
        ``rusage_file``, started by bench/launch.py, which writes the tick tree's wall time and rusage there
        (JSON)."""
        settings = settings or self.settings
        args = {
            "input_bucket": self.input_bucket,
            "output_bucket": self.output_bucket,
            "settings": dataclasses.asdict(settings),
            "workdir": str(workdir or self.workdir),
            "overrides": overrides or {},
            "options": options or {},
        }
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("COG_PIPELINE_CRASH_AT", None)
        if crash_at:
            full_env["COG_PIPELINE_CRASH_AT"] = crash_at
        self.figures.runs += 1
        command = [sys.executable, str(TICKPROC), json.dumps(args)]
        if rusage_file is not None:
            command = [sys.executable, str(LAUNCHER), str(rusage_file), "--", *command]
        return subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=full_env,
            start_new_session=True,
        )

    def fork_tick(self, workdir: Path | None = None, **kw: Any) -> ForkedTick:
        """A tick in a forked child of its own session, running now: what :meth:`spawn` starts, without a new
        Python (and with whatever the test patched, e.g. ``in_process_workflow``). Its stdout ends with the
        result as JSON, as tickproc.py prints it; ``kw``: :meth:`options` arguments."""
        opts = self.options(workdir=workdir or self.workdir, **kw)
        self.figures.runs += 1
        return ForkedTick.start(opts, self.scratch)

    def run_measured(self, **kw: Any) -> tuple[subprocess.CompletedProcess, float, float]:
        """A tick as a process: (its result, seconds, peak RSS in MB of its largest process, Snakemake and
        the jobs included, from wait4 in bench/launch.py: not the test process's own size, which a child spawned
        from it starts with)."""
        out, err, rusage = self.scratch / "tick.out", self.scratch / "tick.err", self.scratch / "tick.rusage.json"
        rusage.unlink(missing_ok=True)
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = self.spawn(**kw, stdout=fo, stderr=fe, rusage_file=rusage)
            proc.wait()
        measured = json.loads(rusage.read_text())
        return (
            subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text()),
            measured["wall"],
            measured["rss_mb"],
        )

    def run_proc(self, timeout: float = 240, **kw: Any) -> subprocess.CompletedProcess:
        proc = self.spawn(**kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            raise AssertionError(f"tick did not finish in {timeout} s:\n{err[-4000:]}") from exc
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # -------------------------------------------------------------------------------- checking
    def objects(self, bucket: str) -> dict[str, dict]:
        out = {}
        for page in self.seed.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj
        return out

    def body(self, bucket: str, key: str) -> bytes:
        return self.seed.get_object(Bucket=bucket, Key=key)["Body"].read()

    def outcomes(self) -> dict[str, list[dict[str, Any]]]:
        """Outcome triples in the input bucket: stem -> [{ts, processed, failed, errors}, ...]."""
        triples: dict[tuple[str, str], dict[str, Any]] = {}
        for key in self.objects(self.input_bucket):
            m = OUTCOME.match(key)
            if m:
                triple = triples.setdefault((m["stem"], m["ts"]), {"ts": m["ts"]})
                triple[m["kind"]] = self.body(self.input_bucket, key).decode("utf-8")
        out: dict[str, list[dict[str, Any]]] = {}
        for (stem, _ts), triple in sorted(triples.items()):
            out.setdefault(stem, []).append(triple)
        return out

    def check(
        self, expected: dict[str, dict[str, Any]], *, leftovers_ok: bool = False, outputs: bool = True
    ) -> dict[str, dict[str, Any]]:
        """The end state, strictly: for each manifest stem exactly one outcome triple whose processed rows
        are ``expected[stem]["processed"]`` (in order) and whose failed rows are the keys of
        ``expected[stem]["failed"]`` with a reason containing the value; no processing object, raw
        manifest or claim marker left; input images unchanged; every output object complete and
        correct. Updates the figures; returns the outcome triples by stem."""
        fig = self.figures
        objs = self.objects(self.input_bucket)
        outcomes = self.outcomes()
        problems = []
        if not leftovers_ok:
            left = [
                k
                for k in objs
                if "processing-" in k
                or k.startswith(".cog-pipeline/")
                or any(k == stem + "raw.csv" for stem in expected)
            ]
            if left:
                problems.append(f"left in the input bucket: {left}")
        found: dict[str, dict[str, Any]] = {}
        for stem, want in expected.items():
            triples = outcomes.get(stem, [])
            if len(triples) != 1:
                problems.append(
                    f"{stem}: {len(triples)} outcome triples (want exactly 1): {[t['ts'] for t in triples]}"
                )
                if not triples:
                    fig.rows_lost += len(want.get("processed", [])) + len(want.get("failed", ()))
                    continue
            triple = triples[-1]
            found[stem] = triple
            if set(triple) != {"ts", "processed", "failed", "errors"}:
                problems.append(f"{stem}: incomplete outcome triple {sorted(triple)}")
                continue
            processed = [r[0] for r in rows(triple["processed"])]
            failed_rows = rows(triple["failed"])
            errors = rows(triple["errors"])
            if errors and errors[0] == ["key", "bands", "reason"]:
                errors = errors[1:]
            reasons = {r[0]: r[2] for r in errors}
            want_processed = list(want.get("processed", []))
            failed_spec = want.get("failed", {})
            want_pairs = list(failed_spec.items()) if isinstance(failed_spec, dict) else list(failed_spec)
            want_failed = dict(want_pairs)
            if processed != want_processed:
                problems.append(f"{stem}: processed {processed} != {want_processed}")
            if sorted(r[0] for r in failed_rows) != sorted(k for k, _ in want_pairs):
                problems.append(
                    f"{stem}: failed {[r[0][:60] for r in failed_rows][:20]} != {[k[:60] for k, _ in want_pairs][:20]}"
                )
            if len(errors) != len(failed_rows):
                problems.append(f"{stem}: {len(errors)} error rows for {len(failed_rows)} failed rows")
            for key, fragment in want_failed.items():
                if key in reasons and fragment not in reasons[key]:
                    problems.append(f"{stem}: reason for {key[:60]!r} is {reasons[key][:200]!r}, want {fragment!r}")
            accounted = Counter(processed) + Counter(r[0] for r in failed_rows)
            wanted = Counter(want_processed) + Counter(k for k, _ in want_pairs)
            fig.rows_lost += sum((wanted - accounted).values())
            fig.rows_duplicated += sum((accounted - wanted).values())
            fig.rows_processed += len(processed)
            fig.rows_failed += len(failed_rows)
        # Inputs untouched.
        for key, (etag, digest) in self.inputs.items():
            fig.input_objects_checked += 1
            if (
                key not in objs
                or objs[key]["ETag"] != etag
                or hashlib.sha256(self.body(self.input_bucket, key)).hexdigest() != digest
            ):
                fig.input_objects_changed += 1
                problems.append(f"input object changed or gone: {key}")
        # Every output object complete, made from the current input, and the processed rows all have both.
        out_objs = self.objects(self.output_bucket)
        if outputs:
            for key in out_objs:
                fig.outputs_checked += 1
                problem = self._check_output(key)
                if problem:
                    fig.partial_outputs += 1
                    problems.append(f"output {key[:80]!r}: {problem}")
            for stem, triple in found.items():
                for key in (r[0] for r in rows(triple.get("processed", ""))):
                    for k in (key, key[:-4] + ".jpg"):
                        if k not in out_objs:
                            problems.append(f"{stem}: processed row {key!r} has no {k!r} in the output bucket")
        uploads = self.seed.list_multipart_uploads(Bucket=self.output_bucket).get("Uploads", [])
        fig.incomplete_multipart_uploads += len(uploads)
        assert not problems, "\n".join(problems)
        return found

    def _check_output(self, key: str) -> str | None:
        data = self.body(self.output_bucket, key)
        if key.endswith(".json"):  # a STAC Item (work/delivery.py): checksums of the COG and JPEG beside it
            try:
                assets = json.loads(data)["assets"]
                for name, other in (("image", key[:-5] + ".tif"), ("preview", key[:-5] + ".jpg")):
                    if (
                        assets[name]["file:checksum"]
                        != "1220" + hashlib.sha256(self.body(self.output_bucket, other)).hexdigest()
                    ):
                        return f"its {name} checksum is not that of {other}"
            except Exception as exc:  # noqa: BLE001
                return f"not a STAC Item of the outputs beside it: {exc!r}"
            return None
        beside = re.fullmatch(r"(.*?)(\.\d+)?(\.jgw|\.jpg\.aux\.xml|\.jpg)", key)
        if beside and (beside.group(2) or beside.group(3) != ".jpg"):  # a file beside a JPEG preview (work/batch.py)
            if beside.group(1) + ".jpg" not in self.objects(self.output_bucket):
                return "beside no JPEG preview"
            if beside.group(3) == ".jgw" and len(data.split()) != 6:
                return "not a world file (six numbers)"
            if beside.group(3) == ".jpg.aux.xml" and b"<PAMDataset" not in data:
                return "not a GDAL .aux.xml"
            if beside.group(3) == ".jpg" and not data.startswith(b"\xff\xd8"):
                return "not a JPEG"
            return None
        head = self.seed.head_object(Bucket=self.output_bucket, Key=key)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("out.tif" if key.endswith(".tif") else "out.jpg")
            path.write_bytes(data)
            source_key = key if key.endswith(".tif") else key[:-4] + ".tif"
            try:
                source = self.body(self.input_bucket, source_key)
            except Exception:  # noqa: BLE001
                return "no input object for it"
            src = Path(tmp) / "src.tif"
            src.write_bytes(source)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                try:
                    if key.endswith(".tif"):
                        if not cog_validate(str(path), quiet=True)[0]:
                            return "not a valid COG"
                        want = self.seed.head_object(Bucket=self.input_bucket, Key=source_key)["ETag"]
                        if head["Metadata"].get("cog-pipeline-source-etag") != want:
                            return "not made from the current input"
                        with rasterio.open(path) as c, rasterio.open(src) as s:
                            if not np.array_equal(c.read(), s.read(), equal_nan=c.dtypes[0].startswith("float")):
                                return "pixels differ from the input"
                    else:
                        with rasterio.open(path, driver="JPEG") as j, rasterio.open(src) as s:
                            j.read()
                            if (j.width, j.height) != (s.width, s.height):
                                return "JPEG size differs from the input"
                except Exception as exc:  # noqa: BLE001
                    return f"unreadable: {exc}"
        return None
