"""HTCondor submission: the Crondor that ticks, one driver job per run, and Snakemake's job settings.

Everything the pipeline queues carries custom attributes, so one constraint selects it:
``CogPipeline == true``, ``CogPipelinePattern`` (the manifest glob), ``CogPipelineRole``
(``crondor``, ``driver`` or ``job``) and, for a run's driver and jobs, ``CogPipelineRun`` (the run id).

Builders (:func:`crondor_submit`, :func:`driver_submit`, :func:`snakemake_args`, ...) need no schedd.
Functions that talk to one (:func:`check_schedd`, :func:`submit`, :func:`start_crondor`,
:func:`stop_pipeline`, :func:`submit_driver`, :func:`cleanup_run`, :func:`apply_hold_policy`) raise
:class:`~cog_pipeline.errors.PipelineError` when none is reachable. Nothing here reads an S3 key
file: only key *file paths* are handled, and only transferred to jobs by HTCondor.

``python -m cog_pipeline.htcondor supervise --run-id ID -- COMMAND...`` is what a driver job runs:
it runs COMMAND (``cog-pipeline drive ...``), puts the hold policy on the run's jobs while it
runs, and removes the run's leftover jobs afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from . import WORKFLOW_DIR
from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import htcondor2

log = logging.getLogger(__name__)

PROFILE_DIR = WORKFLOW_DIR / "profiles" / "htcondor"
PROFILE_CONFIG = PROFILE_DIR / "config.yaml"
JOB_WRAPPER = PROFILE_DIR / "job-wrapper.sh"
#: Environment variable naming a settings file to use instead of profiles/htcondor/cog-pipeline.yaml.
SETTINGS_ENV = "COG_PIPELINE_HTCONDOR_SETTINGS"
DEFAULT_SETTINGS = PROFILE_DIR / "cog-pipeline.yaml"

#: Directory of a run holding its own copy of the workflow (what execute points receive).
STAGE_DIR = "workflow"
#: Per-run settings for job-wrapper.sh, inside STAGE_DIR (names and paths only).
JOB_ENV = "job.env"

CRONDOR_BATCH_PREFIX = "COG-Pipeline-Crondor-"
DRIVER_BATCH_PREFIX = "COG-Pipeline-DAG-"
ROLE_CRONDOR, ROLE_DRIVER, ROLE_JOB = "crondor", "driver", "job"
#: Carries ``cog-pipeline start --max-running`` from the Crondor through the tick to each driver.
MAX_RUNNING_ENV = "COG_PIPELINE_MAX_RUNNING"
#: The only variables local-universe jobs (Crondor, drivers) get from the submitter.
ENV_PASSTHROUGH = ("PATH", "HOME", "CONDOR_CONFIG", SETTINGS_ENV, MAX_RUNNING_ENV)

NO_SCHEDD = "No HTCondor schedd reachable (is this an access point? is CONDOR_CONFIG set?)"

# JobStatus codes.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING, SUSPENDED = 1, 2, 3, 4, 5, 6, 7
# HoldReasonCode values never released or removed by the policy: a user's condor_hold, spooling.
_USER_HOLD_CODES = (1, 16)


# --------------------------------------------------------------------------------------------
# Bindings and quoting
# --------------------------------------------------------------------------------------------

def _bindings() -> ModuleType:
    """``htcondor2``, imported on first use (its CONDOR_CONFIG warning is reported by our errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CONDOR_CONFIG.*")
        import htcondor2
    return htcondor2


def _classad() -> ModuleType:
    import classad2

    return classad2


def _one_line(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise PipelineError(f"{what} must be a single line without NUL characters: {value!r}")
    return value


def submit_value(value: str, what: str = "value") -> str:
    """``value`` safe as a submit-description value: ``$`` cannot start a macro, one line only."""
    return _one_line(value, what).replace("$", "$(DOLLAR)")


def classad_string(value: str, what: str = "value") -> str:
    r"""A ClassAd string literal of ``value`` for a submit description (``+Attr = <this>``).

    condor_submit reads these in the old ClassAd syntax: ``\"`` is a quote, any other backslash is
    kept as is (so ``\\`` or ``\303`` escapes would be mangled): backslashes are refused, non-ASCII
    text is written as UTF-8.
    """
    if "\\" in value:
        raise PipelineError(f"{what} must not contain a backslash: {value!r}")
    return submit_value('"' + _one_line(value, what).replace('"', '\\"') + '"', what)


def classad_literal(value: str) -> str:
    """A ClassAd string literal for a constraint (``CogPipelineRun =?= <this>``)."""
    return _classad().quote(_one_line(value, "constraint value"))


def format_arguments(argv: Iterable[str]) -> str:
    """HTCondor's new-syntax ``arguments`` for ``argv`` (each element arrives as one argument)."""
    parts = []
    for arg in argv:
        arg = str(arg)
        quoted = arg.replace('"', '""')
        if arg == "" or any(c in arg for c in " \t'\""):
            quoted = "'" + quoted.replace("'", "''") + "'"
        parts.append(quoted)
    return submit_value('"' + " ".join(parts) + '"', "arguments")


def format_environment(env: dict[str, str]) -> str:
    """HTCondor's new-syntax ``environment`` for ``env``."""
    parts = []
    for name, value in env.items():
        if not name.replace("_", "").isalnum() or name[0].isdigit():
            raise PipelineError(f"invalid environment variable name {name!r}")
        quoted = value.replace('"', '""')
        if value == "" or any(c in value for c in " \t'\""):
            quoted = "'" + quoted.replace("'", "''") + "'"
        parts.append(f"{name}={quoted}")
    return submit_value('"' + " ".join(parts) + '"', "environment")


def passthrough_environment() -> dict[str, str]:
    """The submitter's PATH, HOME, CONDOR_CONFIG and settings-file variable (when set); nothing else.

    ``CONDOR_CONFIG=/dev/null`` is what the bindings set when they find no configuration: not passed.
    """
    env = {name: os.environ[name] for name in ENV_PASSTHROUGH if os.environ.get(name)}
    if env.get("CONDOR_CONFIG") == os.devnull:
        del env["CONDOR_CONFIG"]
    env.setdefault("PATH", os.defpath)
    return env


def entry_point() -> Path:
    """Absolute path of the ``cog-pipeline`` command of this installation."""
    beside = Path(sys.executable).parent / "cog-pipeline"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("cog-pipeline")
    if found:
        return Path(found).absolute()
    raise PipelineError("cannot find the cog-pipeline command beside this Python or on PATH; "
                        "install the package (pip install -e .) in the environment you submit from")


def _check_pattern(pattern: str) -> str:
    if not pattern:
        raise PipelineError("the manifest pattern (-p) must not be empty")
    return _one_line(pattern, "the manifest pattern (-p)")


def _tags(pattern: str, role: str, run_id: str | None = None) -> dict[str, str]:
    tags = {
        "+CogPipeline": "true",
        "+CogPipelinePattern": classad_string(pattern, "the manifest pattern"),
        "+CogPipelineRole": classad_string(role),
    }
    if run_id is not None:
        tags["+CogPipelineRun"] = classad_string(run_id, "the run id")
    return tags


# --------------------------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------------------------

def pattern_constraint(pattern: str) -> str:
    """Every job of the pipeline watching ``pattern`` (case-sensitive, unlike ``==`` on strings)."""
    return f"CogPipeline =?= true && CogPipelinePattern =?= {classad_literal(pattern)}"


def run_constraint(run_id: str) -> str:
    """The driver and every job of one run."""
    return f"CogPipeline =?= true && CogPipelineRun =?= {classad_literal(run_id)}"


def _role(role: str) -> str:
    return f"CogPipelineRole =?= {classad_literal(role)}"


# --------------------------------------------------------------------------------------------
# Submit descriptions (no schedd needed)
# --------------------------------------------------------------------------------------------

def cron_fields(every_minutes: int) -> dict[str, str]:
    """Cron submit commands for a job that starts every ``every_minutes`` minutes."""
    n = int(every_minutes)
    if 1 <= n <= 59:
        minute, hour = f"*/{n}", "*"
    elif n % 60 == 0 and 1 <= n // 60 <= 23 and 24 % (n // 60) == 0:
        minute, hour = "0", f"*/{n // 60}"
    elif n == 24 * 60:
        minute, hour = "0", "0"
    else:
        raise PipelineError(f"--every {every_minutes}: use 1-59 minutes, or whole hours dividing 24 "
                            "(60, 120, 180, 240, 360, 480, 720, 1440)")
    return {"cron_minute": minute, "cron_hour": hour, "cron_day_of_month": "*",
            "cron_month": "*", "cron_day_of_week": "*"}


def _option_index(args: list[str], names: tuple[str, ...]) -> int | None:
    for i, arg in enumerate(args):
        if arg in names or any(arg.startswith(n + "=") for n in names if n.startswith("--")):
            return i
    return None


def _set_option(args: list[str], names: tuple[str, ...], value: str) -> None:
    i = _option_index(args, names)
    if i is None:
        args += [names[0], value]
    elif "=" in args[i]:
        args[i] = f"{args[i].split('=', 1)[0]}={value}"
    else:
        args[i + 1: i + 2] = [value]


def tick_arguments(tick_argv: list[str], pattern: str, workdir: Path) -> list[str]:
    """``cog-pipeline`` arguments the Crondor runs: ``tick_argv`` + ``--executor htcondor`` etc."""
    args = [str(a) for a in tick_argv]
    if not args or args[0] != "tick":
        args.insert(0, "tick")
    i = _option_index(args, ("-p", "--pattern"))
    if i is None:
        args += ["--pattern", pattern]
    else:
        given = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
        if given != pattern:
            raise PipelineError(f"tick arguments watch pattern {given!r}, not {pattern!r}")
    _set_option(args, ("--executor",), "htcondor")
    _set_option(args, ("--workdir",), str(workdir))
    return args


def _max_running(value: Any, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise PipelineError(f"{what} must be a whole number, not {value!r}") from None
    if n < 1:
        raise PipelineError(f"{what} must be at least 1, not {n}")
    return n


def crondor_submit(*, tick_argv: list[str], pattern: str, every_minutes: int = 15, workdir: Path,
                   max_running: int | None = None) -> "htcondor2.Submit":
    """The Crondor: a local-universe cron job running ``cog-pipeline tick ... --executor htcondor``.

    ``max_running`` reaches each run's Snakemake (``--jobs``) through the environment
    (COG_PIPELINE_MAX_RUNNING), so the tick needs no extra flag.
    """
    _check_pattern(pattern)
    env = passthrough_environment()
    env.pop(MAX_RUNNING_ENV, None)
    if max_running is not None:
        env[MAX_RUNNING_ENV] = str(_max_running(max_running, "--max-running"))
    workdir = Path(workdir).resolve()
    if not workdir.is_dir():
        raise PipelineError(f"{workdir} is not a directory (the Crondor's logs and run directories go there)")
    wd = submit_value(str(workdir), "the work directory")
    description = {
        "universe": "local",
        "executable": submit_value(str(entry_point()), "the cog-pipeline path"),
        "arguments": format_arguments(tick_arguments(tick_argv, pattern, workdir)),
        "initialdir": wd,
        "log": f"{wd}/crondor_$(CLUSTER).log",
        "output": f"{wd}/crondor_$(CLUSTER).out",
        "error": f"{wd}/crondor_$(CLUSTER).err",
        **cron_fields(every_minutes),
        # Stay in the queue after each tick: the job runs again at the next cron time.
        "on_exit_remove": "false",
        "batch_name": submit_value(CRONDOR_BATCH_PREFIX + pattern, "the batch name"),
        "getenv": "false",
        "environment": format_environment(env),
        **_tags(pattern, ROLE_CRONDOR),
        "+CogPipelineWorkdir": classad_string(str(workdir)),
    }
    if max_running is not None:
        description["+CogPipelineMaxRunning"] = env[MAX_RUNNING_ENV]
    return _bindings().Submit(description)


def driver_submit(*, run_dir: Path, pattern: str, run_id: str, drive_argv: list[str]) -> "htcondor2.Submit":
    """One run's driver: a local-universe job running ``cog-pipeline <drive_argv>`` under the supervisor.

    ``drive_argv`` are arguments of the ``cog-pipeline`` command (e.g. ``["drive", DIR, "--executor",
    "htcondor"]``). Logs go to ``run_dir/logs/driver_<cluster>.{log,out,err}``.
    """
    _check_pattern(pattern)
    run_dir = Path(run_dir).resolve()
    rd = submit_value(str(run_dir), "the run directory")
    command = [str(entry_point()), *[str(a) for a in drive_argv]]
    arguments = ["-m", "cog_pipeline.htcondor", "supervise", "--run-id", run_id, "--", *command]
    description = {
        "universe": "local",
        "executable": submit_value(sys.executable, "the Python path"),
        "arguments": format_arguments(arguments),
        "initialdir": rd,
        "log": f"{rd}/logs/driver_$(CLUSTER).log",
        "output": f"{rd}/logs/driver_$(CLUSTER).out",
        "error": f"{rd}/logs/driver_$(CLUSTER).err",
        "batch_name": submit_value(DRIVER_BATCH_PREFIX + pattern, "the batch name"),
        "getenv": "false",
        "environment": format_environment(passthrough_environment()),
        **_tags(pattern, ROLE_DRIVER, run_id),
    }
    return _bindings().Submit(description)


# --------------------------------------------------------------------------------------------
# Talking to the schedd
# --------------------------------------------------------------------------------------------

def _detail(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _schedd() -> Any:
    htcondor2 = _bindings()
    try:
        return htcondor2.Schedd()
    except Exception as exc:  # noqa: BLE001 - the bindings raise several exception types
        raise PipelineError(f"{NO_SCHEDD}: {_detail(exc)}") from None


def check_schedd() -> None:
    """Raise PipelineError unless a schedd answers (call before claiming work meant for the pool)."""
    _query(_schedd(), "false", ["ClusterId"])


def _query(schedd: Any, constraint: str, projection: list[str]) -> list[Any]:
    try:
        return list(schedd.query(constraint=constraint, projection=projection))
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"{NO_SCHEDD}: query failed: {_detail(exc)}") from None


JOB_STATUS = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held", 6: "transferring", 7: "suspended"}


#: Status shown for a Crondor between ticks: HTCondor keeps a deferred job Running while its starter
#: waits for ``DeferralTime`` (seen on a pool), which would read as "a tick is running".
WAITING = "waiting for its next tick"


def _job_status(ad: Any, now: float) -> tuple[str, int | None]:
    """(status text, next start as epoch seconds or None) of a job ad."""
    status = JOB_STATUS.get(int(ad.get("JobStatus", 0)), "unknown")
    try:
        deferral = int(ad.get("DeferralTime"))
    except (TypeError, ValueError):
        return status, None
    if status in ("idle", "running") and deferral > now:
        return WAITING, deferral
    return status, None


def pipeline_jobs() -> list[dict[str, Any]]:
    """This pipeline's queued jobs (any pattern): cluster, batch name, role, run, status, hold reason,
    and for a Crondor between ticks the time of its next one (``next_run``)."""
    projection = ["ClusterId", "ProcId", "JobBatchName", "CogPipelineRole", "CogPipelineRun", "JobStatus",
                  "HoldReason", "QDate", "DeferralTime"]
    ads = _query(_schedd(), "CogPipeline =?= true", projection)
    now = time.time()
    jobs = []
    for ad in ads:
        status, next_run = _job_status(ad, now)
        jobs.append({"cluster": int(ad.get("ClusterId", 0)), "batch_name": str(ad.get("JobBatchName", "")),
                     "role": str(ad.get("CogPipelineRole", "")), "run": str(ad.get("CogPipelineRun", "")),
                     "status": status, "next_run": next_run, "hold_reason": str(ad.get("HoldReason", "")),
                     "queued": int(ad.get("QDate", 0))})
    return jobs


def _job_ids(ads: Iterable[Any]) -> list[str]:
    return [f"{int(ad['ClusterId'])}.{int(ad['ProcId'])}" for ad in ads]


def _remove(schedd: Any, constraint: str) -> int:
    ids = _job_ids(_query(schedd, f"({constraint}) && JobStatus =!= {REMOVED}", ["ClusterId", "ProcId"]))
    if not ids:
        return 0
    htcondor2 = _bindings()
    try:
        result = schedd.act(htcondor2.JobAction.Remove, ids)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"could not remove jobs {', '.join(ids)}: {_detail(exc)}") from None
    try:
        return int(result["TotalSuccess"])
    except (KeyError, TypeError, ValueError):
        return len(ids)


def submit(description: "htcondor2.Submit") -> int:
    """Queue ``description``; returns its cluster id."""
    schedd = _schedd()
    try:
        result = schedd.submit(description)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"HTCondor refused the submission: {_detail(exc)}") from None
    return int(result.cluster())


def start_crondor(*, tick_argv: list[str], pattern: str, workdir: Path, every_minutes: int = 15,
                  max_running: int | None = None) -> int:
    """Submit the Crondor for ``pattern`` (one per pattern); returns its cluster id."""
    description = crondor_submit(tick_argv=tick_argv, pattern=pattern, every_minutes=every_minutes,
                                 workdir=workdir, max_running=max_running)
    software_plan(load_settings().software)  # a broken settings file fails now, not at every tick
    schedd = _schedd()
    existing = _query(schedd, f"{pattern_constraint(pattern)} && {_role(ROLE_CRONDOR)} && JobStatus =!= {REMOVED}",
                      ["ClusterId"])
    if existing:
        clusters = ", ".join(str(int(ad["ClusterId"])) for ad in existing)
        raise PipelineError(f"a Crondor for pattern {pattern!r} is already queued (cluster {clusters}); "
                            f"stop it first: cog-pipeline stop -p {shlex.quote(pattern)}")
    return submit(description)


def stop_pipeline(pattern: str) -> int:
    """Remove the Crondor, the drivers and every job of the pipeline watching ``pattern``; returns how many."""
    _check_pattern(pattern)
    mine = (f"({pattern_constraint(pattern)}) || JobBatchName =?= {classad_literal(CRONDOR_BATCH_PREFIX + pattern)}"
            f" || JobBatchName =?= {classad_literal(DRIVER_BATCH_PREFIX + pattern)}")
    schedd = _schedd()
    removed = 0
    # Crondor first (no new tick), then drivers (no new submissions), then whatever they queued.
    for role in (f"{_role(ROLE_CRONDOR)} || JobBatchName =?= {classad_literal(CRONDOR_BATCH_PREFIX + pattern)}",
                 f"{_role(ROLE_DRIVER)} || JobBatchName =?= {classad_literal(DRIVER_BATCH_PREFIX + pattern)}",
                 "true"):
        removed += _remove(schedd, f"({mine}) && ({role})")
    return removed


def cleanup_run(run_id: str, *, include_running: bool = False) -> int:
    """Remove the run's jobs left idle or held (also running ones if ``include_running``); returns how many."""
    states = [IDLE, HELD] + ([RUNNING, TRANSFERRING, SUSPENDED] if include_running else [])
    status = " || ".join(f"JobStatus == {s}" for s in states)
    constraint = f"{run_constraint(run_id)} && CogPipelineRole =!= {classad_literal(ROLE_DRIVER)} && ({status})"
    return _remove(_schedd(), constraint)


def submit_driver(run_dir: Path, pattern: str, run_id: str, drive_argv: list[str]) -> int:
    """Stage the workflow into ``run_dir`` and queue its driver (at most one per run); returns the cluster id."""
    run_dir = Path(run_dir).resolve()
    settings = load_settings()
    stage_workflow(run_dir)
    software_plan(settings.software)  # a missing archive or image fails in the tick, not in every job
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    description = driver_submit(run_dir=run_dir, pattern=pattern, run_id=run_id, drive_argv=drive_argv)
    schedd = _schedd()
    existing = _query(schedd, f"{run_constraint(run_id)} && {_role(ROLE_DRIVER)} && JobStatus =!= {REMOVED} "
                              f"&& JobStatus =!= {COMPLETED}", ["ClusterId"])
    if existing:
        cluster = int(existing[0]["ClusterId"])
        log.warning("run %s already has a driver (cluster %d); not submitting another", run_id, cluster)
        return cluster
    return submit(description)


# --------------------------------------------------------------------------------------------
# Settings: software delivery and the hold policy
# --------------------------------------------------------------------------------------------

SOFTWARE_MODES = ("tarball", "container", "shared")


@dataclass(frozen=True)
class Software:
    """How Python and the packages reach execute points (``software:`` in the settings file)."""

    mode: str = "shared"
    tarball: str = ""
    container_image: str = ""
    python: str = ""


@dataclass(frozen=True)
class HoldPolicy:
    """The original DAG's hold handling: release with exponential backoff, remove at the 5th hold."""

    max_holds: int = 5
    backoff_seconds: int = 60
    backoff_cap_seconds: int = 480
    jitter_slots: int = 5
    jitter_seconds: int = 15
    remove_after_held_seconds: int = 900
    poll_seconds: int = 30

    def _eligible(self) -> str:
        return f"JobStatus == {HELD} && " + " && ".join(f"HoldReasonCode =!= {c}" for c in _USER_HOLD_CODES)

    def release_expression(self) -> str:
        """``PeriodicRelease``: held less than max_holds times and waited its backoff."""
        backoff = f"{self.backoff_seconds} * pow(2, NumHolds - 1)"
        wait = (f"ifThenElse({backoff} < {self.backoff_cap_seconds}, {backoff}, {self.backoff_cap_seconds})"
                f" + (ClusterId % {self.jitter_slots}) * {self.jitter_seconds}")
        return f"{self._eligible()} && NumHolds < {self.max_holds} && (time() - EnteredCurrentStatus) >= {wait}"

    def remove_expression(self) -> str:
        """``PeriodicRemove``: the max_holds-th hold, or held longer than remove_after_held_seconds."""
        return (f"{self._eligible()} && (NumHolds >= {self.max_holds} || "
                f"(time() - EnteredCurrentStatus) >= {self.remove_after_held_seconds})")

    def longest_wait(self) -> int:
        """Seconds a job may stay held before its release is due."""
        return self.backoff_cap_seconds + (self.jitter_slots - 1) * self.jitter_seconds


@dataclass(frozen=True)
class Settings:
    software: Software
    hold_policy: HoldPolicy
    path: Path


def settings_path() -> Path:
    """The settings file in use: ``$COG_PIPELINE_HTCONDOR_SETTINGS`` or profiles/htcondor/cog-pipeline.yaml."""
    return Path(os.environ.get(SETTINGS_ENV) or DEFAULT_SETTINGS)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PipelineError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{what} {path} is not valid YAML: {_detail(exc)}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{what} {path} must be a mapping")
    return data


def load_settings(path: Path | None = None) -> Settings:
    """Read and check the settings file (PipelineError on anything wrong)."""
    path = Path(path) if path else settings_path()
    data = _read_yaml(path, "HTCondor settings file")
    software_data = data.get("software") or {}
    policy_data = data.get("hold_policy") or {}
    if not isinstance(software_data, dict) or not isinstance(policy_data, dict):
        raise PipelineError(f"{path}: software and hold_policy must be mappings")
    unknown = set(software_data) - set(Software.__dataclass_fields__)
    unknown |= set(policy_data) - set(HoldPolicy.__dataclass_fields__)
    if unknown:
        raise PipelineError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    software = Software(**{k: "" if v is None else str(v) for k, v in software_data.items()})
    if software.mode not in SOFTWARE_MODES:
        raise PipelineError(f"{path}: software.mode must be one of {', '.join(SOFTWARE_MODES)}, not {software.mode!r}")
    try:
        policy = HoldPolicy(**{k: int(v) for k, v in policy_data.items()})
    except (TypeError, ValueError):
        raise PipelineError(f"{path}: hold_policy values must be whole numbers") from None
    if min(policy.max_holds, policy.backoff_seconds, policy.backoff_cap_seconds, policy.jitter_slots,
           policy.poll_seconds) < 1 or policy.jitter_seconds < 0:
        raise PipelineError(f"{path}: hold_policy values must be positive")
    if policy.remove_after_held_seconds <= policy.longest_wait():
        raise PipelineError(f"{path}: hold_policy.remove_after_held_seconds must exceed the longest backoff "
                            f"({policy.longest_wait()} s)")
    held_timeout = profile_held_timeout()
    if held_timeout <= policy.remove_after_held_seconds:
        raise PipelineError(f"{PROFILE_CONFIG}: htcondor-held-timeout ({held_timeout} s) must exceed "
                            f"hold_policy.remove_after_held_seconds ({policy.remove_after_held_seconds} s) in {path}")
    return Settings(software=software, hold_policy=policy, path=path)


def load_profile() -> dict[str, Any]:
    """profiles/htcondor/config.yaml."""
    return _read_yaml(PROFILE_CONFIG, "Snakemake profile")


def profile_held_timeout() -> int:
    """The profile's ``htcondor-held-timeout`` in seconds (the plugin's default is 4 h)."""
    return int(load_profile().get("htcondor-held-timeout", 4 * 3600))


def profile_default_resources() -> dict[str, Any]:
    """The profile's ``default-resources`` as a mapping (``snakemake_args`` extends and repeats them)."""
    value = load_profile().get("default-resources") or {}
    if isinstance(value, list):
        pairs = [str(item).split("=", 1) for item in value]
        return {k.strip(): yaml.safe_load(v) for k, v in pairs}
    if not isinstance(value, dict):
        raise PipelineError(f"{PROFILE_CONFIG}: default-resources must be a mapping")
    return dict(value)


@dataclass(frozen=True)
class SoftwarePlan:
    """What a software mode adds to every job: files to transfer, submit resources, wrapper settings."""

    transfer: list[str]
    resources: dict[str, Any]
    wrapper_env: dict[str, str]


def software_plan(software: Software) -> SoftwarePlan:
    """Check ``software`` and turn it into transfers, resources and job-wrapper settings."""
    if software.mode == "tarball":
        tarball = Path(software.tarball).expanduser() if software.tarball else None
        if tarball is None or not tarball.is_absolute():
            raise PipelineError(f"software.mode tarball needs software.tarball: the absolute path of a conda-pack "
                                f"or venv-pack archive (settings file {settings_path()})")
        if not tarball.is_file():
            raise PipelineError(f"environment archive {tarball} not found (software.tarball in {settings_path()})")
        _check_transferable(str(tarball), "software.tarball")
        return SoftwarePlan([str(tarball)], {}, {"COG_PIPELINE_SOFTWARE": "tarball",
                                                 "COG_PIPELINE_ENV_TARBALL": tarball.name})
    if software.mode == "container":
        if not software.container_image:
            raise PipelineError(f"software.mode container needs software.container_image "
                                f"(settings file {settings_path()})")
        return SoftwarePlan([], {"universe": "container", "container_image": software.container_image},
                            {"COG_PIPELINE_SOFTWARE": "container",
                             "COG_PIPELINE_PYTHON": software.python or "python3"})
    return SoftwarePlan([], {}, {"COG_PIPELINE_SOFTWARE": "shared",
                                 "COG_PIPELINE_PYTHON": software.python or sys.executable})


# --------------------------------------------------------------------------------------------
# The run directory and Snakemake's arguments
# --------------------------------------------------------------------------------------------

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "samples", "*.egg-info")
#: Files of the checkout's top level that the rules refer to (besides the Snakefile).
STAGED_FILES = ("environment.yml",)


def stage_workflow(run_dir: Path) -> Path:
    """Copy the workflow (Snakefile, environment.yml, rules, scripts, config, package, job wrapper) into
    ``run_dir/workflow``.

    With ``shared-fs-usage: none`` the plugin transfers workflow files by their path relative to the
    run directory, so they must live inside it. An existing copy is kept: a run keeps its version.
    """
    run_dir = Path(run_dir).resolve()
    dest = run_dir / STAGE_DIR
    if (dest / "Snakefile").is_file():
        return dest
    tmp = run_dir / f".{STAGE_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        shutil.copy2(WORKFLOW_DIR / "Snakefile", tmp / "Snakefile")
        # The rules' `conda: "../environment.yml"`: Snakemake opens it on the access point to record
        # each finished job's metadata (seen on a pool: without it every job "fails" after succeeding).
        for name in STAGED_FILES:
            if (WORKFLOW_DIR / name).is_file():
                shutil.copy2(WORKFLOW_DIR / name, tmp / name)
        for sub in ("rules", "scripts", "config"):
            if (WORKFLOW_DIR / sub).is_dir():
                shutil.copytree(WORKFLOW_DIR / sub, tmp / sub, ignore=_IGNORE)
        shutil.copytree(Path(__file__).resolve().parent, tmp / "cog_pipeline", ignore=_IGNORE)
        shutil.copy2(JOB_WRAPPER, tmp / JOB_WRAPPER.name)
        (tmp / JOB_WRAPPER.name).chmod(0o755)
        tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PipelineError(f"cannot copy the workflow into {dest}: {exc.strerror or exc}") from None
    return dest


def _check_transferable(path: str, what: str) -> None:
    if any(c in path for c in ", \t") or not Path(path).is_absolute():
        raise PipelineError(f"{what} {path!r} cannot be transferred by HTCondor: use an absolute path "
                            "without spaces or commas")


def key_files(run: dict[str, Any]) -> list[Path]:
    """The run's S3 key FILES (absolute paths from run.yaml); their contents are never read here."""
    s3 = run.get("s3") or {}
    paths = [Path(p) for p in (s3.get("access_key_file"), s3.get("secret_key_file")) if p]
    for path in paths:
        _check_transferable(str(path), "S3 key file")
        if not path.is_file():
            raise PipelineError(f"S3 key file {path} not found on the access point")
    names = [p.name for p in paths]
    reserved = {STAGE_DIR, "run.yaml", "manifests", "status", "logs", "outcome", "env", ".snakemake"}
    if len(set(names)) != len(names) or reserved & set(names):
        raise PipelineError(f"S3 key files {', '.join(map(str, paths))}: jobs receive them by file name, so the "
                            f"names must differ from each other and from {', '.join(sorted(reserved))}")
    return paths


def _run_yaml(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.yaml"
    return _read_yaml(path, "run config") if path.is_file() else {}


def write_job_env(stage: Path, env: dict[str, str]) -> Path:
    """Write the job wrapper's settings (shell assignments of names and paths, never secrets)."""
    path = Path(stage) / JOB_ENV
    lines = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    path.write_text("# written by cog_pipeline.htcondor.snakemake_args; sourced by job-wrapper.sh\n"
                    + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def fresh_jobdir(run_dir: Path) -> Path:
    """A new, empty ``logs/htcondor/<n>`` for one Snakemake invocation (avoids the plugin's #60 race)."""
    base = Path(run_dir) / "logs" / "htcondor"
    base.mkdir(parents=True, exist_ok=True)
    n = 1 + max((int(p.name) for p in base.iterdir() if p.name.isdigit()), default=0)
    while True:
        try:
            (base / str(n)).mkdir()
            return (base / str(n)).resolve()
        except FileExistsError:
            n += 1


def _resource_arg(name: str, value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return f"{name}={value}"
    return f"{name}={str(value)!r}"


def _classad_inner(value: str) -> str:
    """The plugin writes ``+X = "<value>"`` verbatim: give it an escaped ClassAd string body."""
    return classad_string(value)[1:-1]


def job_resources(run_dir: Path, run_id: str, pattern: str, settings: Settings) -> dict[str, Any]:
    """The default resources of every job of a run: the profile's, plus tags and per-run transfers."""
    run_dir = Path(run_dir).resolve()
    plan = software_plan(settings.software)
    keys = key_files(_run_yaml(run_dir))
    resources = profile_default_resources()
    static = [f.strip() for f in str(resources.get("htcondor_transfer_input_files", "")).split(",") if f.strip()]
    resources["htcondor_transfer_input_files"] = ",".join(static + [str(k) for k in keys] + plan.transfer)
    resources.update(plan.resources)
    resources["classad_CogPipeline"] = True
    resources["classad_CogPipelineRole"] = ROLE_JOB
    resources["classad_CogPipelinePattern"] = _classad_inner(_check_pattern(pattern))
    resources["classad_CogPipelineRun"] = _classad_inner(run_id)
    return resources


def snakemake_args(run_dir: Path, run_id: str, pattern: str, *, jobs: int | None = None) -> list[str]:
    """Arguments appended to the driver's Snakemake command for an HTCondor run.

    They override ``--snakefile`` and ``--directory`` (argparse keeps the last value): Snakemake must
    run with its current directory = ``run_dir`` and the run's own copy of the workflow, because
    the plugin sends workflow files to jobs by their path relative to that directory. ``jobs``
    (else ``max_running`` from run.yaml, else $COG_PIPELINE_MAX_RUNNING set by ``cog-pipeline start
    --max-running``, else the profile's ``jobs``) caps the run's concurrent clusters.
    """
    run_dir = Path(run_dir).resolve()
    settings = load_settings()
    stage = stage_workflow(run_dir)
    resources = job_resources(run_dir, run_id, pattern, settings)
    plan = software_plan(settings.software)
    names = [k.name for k in key_files(_run_yaml(run_dir))]
    write_job_env(stage, {**plan.wrapper_env, "COG_PIPELINE_PRIVATE_FILES": " ".join(names)})
    args = ["--profile", str(PROFILE_DIR),
            "--snakefile", str(stage / "Snakefile"),
            "--directory", ".",
            "--nolock",  # one driver per run (submit_driver); a restarted driver must not trip on a stale lock
            "--htcondor-jobdir", str(fresh_jobdir(run_dir)),
            "--htcondor-held-timeout", str(profile_held_timeout()),
            "--default-resources", *[_resource_arg(k, v) for k, v in resources.items()]]
    limit = jobs if jobs is not None else _run_yaml(run_dir).get("max_running")
    if limit is None:
        limit = os.environ.get(MAX_RUNNING_ENV) or None
    if limit is not None:
        args += ["--jobs", str(_max_running(limit, "max_running"))]
    return args


# --------------------------------------------------------------------------------------------
# Hold policy and the driver's supervisor
# --------------------------------------------------------------------------------------------

def apply_hold_policy(run_id: str, policy: HoldPolicy | None = None) -> int:
    """Put PeriodicRelease/PeriodicRemove on the run's jobs that lack them; returns how many jobs.

    The schedd then evaluates them itself, as it did the original DAG's submit commands, even if
    this driver dies.
    """
    policy = policy or load_settings().hold_policy
    schedd = _schedd()
    ads = _query(schedd, f"{run_constraint(run_id)} && {_role(ROLE_JOB)} && CogPipelineHoldPolicy =!= true "
                         f"&& JobStatus =!= {REMOVED} && JobStatus =!= {COMPLETED}", ["ClusterId", "ProcId"])
    ids = _job_ids(ads)
    if not ids:
        return 0
    try:
        schedd.edit(ids, "PeriodicRelease", policy.release_expression())
        schedd.edit(ids, "PeriodicRemove", policy.remove_expression())
        schedd.edit(ids, "CogPipelineHoldPolicy", "true")
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"could not set the hold policy on {', '.join(ids)}: {_detail(exc)}") from None
    return len(ids)


def _watch_holds(run_id: str, policy: HoldPolicy, stop: threading.Event) -> None:
    while not stop.wait(policy.poll_seconds):
        try:
            count = apply_hold_policy(run_id, policy)
            if count:
                log.info("hold policy set on %d new job(s) of run %s", count, run_id)
        except PipelineError as exc:
            log.warning("%s", exc)


def own_job_id() -> tuple[int, int] | None:
    """(ClusterId, ProcId) of the HTCondor job this process runs in, from the starter's job ad; None outside one."""
    path = os.environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    ids: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() in ("ClusterId", "ProcId"):
            try:
                ids[name.strip()] = int(value.strip())
            except ValueError:
                pass
    return (ids["ClusterId"], ids["ProcId"]) if len(ids) == 2 else None


def driver_removed(job: tuple[int, int] | None) -> bool:
    """Whether the SIGTERM a driver got means "remove this run" rather than "the schedd is going away".

    condor_rm (and ``cog-pipeline stop``) marks the driver's job Removed before signalling it; a schedd
    shutdown or restart signals it while the job stays Running, and the schedd reconnects to the run's
    running batch jobs afterwards. Removing those then orphans their claims: seen on a real pool, the
    starter of a removed job kept its slot for the job lease (40 min) and the restarted driver's jobs
    idled behind it. Outside HTCondor (``job`` None: run by hand, Ctrl-C) a signal means stop.
    """
    if job is None:
        return True
    try:
        ads = _query(_schedd(), f"ClusterId == {int(job[0])} && ProcId == {int(job[1])}", ["JobStatus"])
    except PipelineError:
        return False  # no schedd answering: it is shutting down; leave running jobs to be reconnected
    return not ads or any(int(ad.get("JobStatus", 0)) == REMOVED for ad in ads)


def supervise(run_id: str, command: list[str]) -> int:
    """Run ``command`` (the driver), keep the hold policy on the run's jobs, then remove leftovers.

    Leftovers are the run's idle and held jobs; running ones too only when the driver itself was
    removed (:func:`driver_removed`), not when the schedd shuts down or restarts.
    """
    try:
        policy: HoldPolicy | None = load_settings().hold_policy
    except PipelineError as exc:
        log.error("%s; running without the hold policy", exc)
        policy = None
    job = own_job_id()  # read now: the starter may delete its scratch directory before we are done
    terminated = threading.Event()
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, _frame: Any) -> None:
        terminated.set()
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    stop = threading.Event()
    watcher = None
    if policy is not None:
        watcher = threading.Thread(target=_watch_holds, args=(run_id, policy, stop), name="hold-policy", daemon=True)
        watcher.start()
    code = child.wait()
    stop.set()
    if watcher is not None:
        watcher.join(timeout=10)
    include_running = False
    if terminated.is_set():
        include_running = driver_removed(job)
        log.info("driver %s: %s", "removed" if include_running else "stopped by the schedd (shutdown, restart "
                 "or eviction)", "removing the run's running jobs too" if include_running else
                 "leaving the run's running jobs to finish")
    try:
        removed = cleanup_run(run_id, include_running=include_running)
        if removed:
            log.info("removed %d job(s) of run %s left in the queue", removed, run_id)
    except PipelineError as exc:
        log.warning("%s", exc)
    return 128 + signal.SIGTERM if terminated.is_set() and code < 0 else code


#: The supervisor's messages, appended in the run's logs/ (HTCondor truncates driver_<cluster>.err
#: when a schedd restart re-runs the driver job, so the messages of the first start would be lost).
SUPERVISOR_LOG = "supervisor.log"


def _append_log_to(path: Path) -> None:
    """Also append this process's log records to ``path`` when its directory exists (the run's logs/)."""
    if not path.parent.is_dir():
        return
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot append to %s: %s", path, exc.strerror)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s pid %(process)d: %(message)s"))
    logging.getLogger().addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m cog_pipeline.htcondor``: the driver's supervisor and helpers for manual use."""
    parser = argparse.ArgumentParser(prog="python -m cog_pipeline.htcondor", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("supervise", help="run a driver command with the hold policy, then clean the run up")
    p.add_argument("--run-id", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p = sub.add_parser("snakemake-args", help="print the per-run Snakemake arguments (manual reruns)")
    p.add_argument("run_dir")
    p = sub.add_parser("submit-driver", help="queue (again) the driver of a run directory")
    p.add_argument("run_dir")
    p = sub.add_parser("hold-policy", help="print the PeriodicRelease / PeriodicRemove expressions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if args.command == "supervise":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                parser.error("supervise needs -- COMMAND")
            _append_log_to(Path("logs") / SUPERVISOR_LOG)
            return supervise(args.run_id, cmd)
        run_dir = Path(getattr(args, "run_dir", ".")).resolve()
        if args.command == "hold-policy":
            policy = load_settings().hold_policy
            print(f"periodic_release = {policy.release_expression()}")
            print(f"periodic_remove = {policy.remove_expression()}")
            return 0
        run = _read_yaml(run_dir / "run.yaml", "run config")
        if args.command == "snakemake-args":
            print(shlex.join(snakemake_args(run_dir, str(run["run_id"]), str(run.get("pattern", "")))))
            return 0
        cluster = submit_driver(run_dir, str(run.get("pattern", "")), str(run["run_id"]),
                                ["drive", str(run_dir), "--executor", "htcondor"])
        print(f"driver of {run_dir.name}: cluster {cluster}")
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
