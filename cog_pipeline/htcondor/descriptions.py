"""Submit descriptions for the pipeline's own jobs (no schedd needed): quoting, tags, constraints.

Everything the pipeline queues carries custom attributes, so one constraint selects it:
``CogPipeline == true``, ``CogPipelinePattern`` (the manifest glob), ``CogPipelineRole``
(``crondor``, ``driver`` or ``job``) and, for a run's driver and jobs, ``CogPipelineRun`` (the run id).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

from cog_pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import htcondor2

#: Environment variable naming a settings file to use instead of profiles/htcondor/cog-pipeline.yaml.
SETTINGS_ENV = "COG_PIPELINE_HTCONDOR_SETTINGS"
CRONDOR_BATCH_PREFIX = "COG-Pipeline-Crondor-"
DRIVER_BATCH_PREFIX = "COG-Pipeline-DAG-"
ROLE_CRONDOR, ROLE_DRIVER, ROLE_JOB = "crondor", "driver", "job"
#: Carries ``cog-pipeline start --max-running`` from the Crondor through the tick to each driver.
MAX_RUNNING_ENV = "COG_PIPELINE_MAX_RUNNING"
#: The only variables local-universe jobs (Crondor, drivers) get from the submitter.
ENV_PASSTHROUGH = ("PATH", "HOME", "CONDOR_CONFIG", SETTINGS_ENV, MAX_RUNNING_ENV)

# JobStatus codes.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING, SUSPENDED = 1, 2, 3, 4, 5, 6, 7


def exception_text(exc: BaseException) -> str:
    """An exception's message on one line (or its type's name), for error messages."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# Bindings and quoting
# --------------------------------------------------------------------------------------------


def bindings() -> ModuleType:
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
    raise PipelineError(
        "cannot find the cog-pipeline command beside this Python or on PATH; "
        "install the package (pip install -e .) in the environment you submit from"
    )


def check_pattern(pattern: str) -> str:
    """``pattern`` if it can name a pipeline (not empty, one line); PipelineError otherwise."""
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


def role_constraint(role: str) -> str:
    """Jobs of one role (``crondor``, ``driver`` or ``job``)."""
    return f"CogPipelineRole =?= {classad_literal(role)}"


#: Jobs still in the queue for good: neither removed nor completed.
STILL_QUEUED = f"JobStatus =!= {REMOVED} && JobStatus =!= {COMPLETED}"


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
        raise PipelineError(
            f"--every {every_minutes}: use 1-59 minutes, or whole hours dividing 24 "
            "(60, 120, 180, 240, 360, 480, 720, 1440)"
        )
    return {
        "cron_minute": minute,
        "cron_hour": hour,
        "cron_day_of_month": "*",
        "cron_month": "*",
        "cron_day_of_week": "*",
    }


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
        args[i + 1 : i + 2] = [value]


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


def max_running_value(value: Any, what: str) -> int:
    """``value`` as a cap on concurrent clusters (a whole number >= 1); PipelineError naming ``what``."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise PipelineError(f"{what} must be a whole number, not {value!r}") from None
    if n < 1:
        raise PipelineError(f"{what} must be at least 1, not {n}")
    return n


def crondor_submit(
    *, tick_argv: list[str], pattern: str, every_minutes: int = 15, workdir: Path, max_running: int | None = None
) -> htcondor2.Submit:
    """The Crondor: a local-universe cron job running ``cog-pipeline tick ... --executor htcondor``.

    ``max_running`` reaches each run's Snakemake (``--jobs``) through the environment
    (COG_PIPELINE_MAX_RUNNING), so the tick needs no extra flag.
    """
    check_pattern(pattern)
    env = passthrough_environment()
    env.pop(MAX_RUNNING_ENV, None)
    if max_running is not None:
        env[MAX_RUNNING_ENV] = str(max_running_value(max_running, "--max-running"))
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
    return bindings().Submit(description)


def driver_submit(*, run_dir: Path, pattern: str, run_id: str, drive_argv: list[str]) -> htcondor2.Submit:
    """One run's driver: a local-universe job running ``cog-pipeline <drive_argv>`` under the supervisor.

    ``drive_argv`` are arguments of the ``cog-pipeline`` command (e.g. ``["drive", DIR, "--executor",
    "htcondor"]``). Logs go to ``run_dir/logs/driver_<cluster>.{log,out,err}``.
    """
    check_pattern(pattern)
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
    return bindings().Submit(description)
