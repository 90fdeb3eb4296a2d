"""A run directory for the pool: its own copy of the workflow, the job wrapper's settings, and the
arguments that make the driver's Snakemake submit every job through the plugin with the run's tags.
"""

from __future__ import annotations

import compileall
import os
import py_compile
import shlex
import shutil
from pathlib import Path
from typing import Any

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.rundir import RunDir
from cog_pipeline.core.transfer import PRESIGNED, transfer_mode
from .descriptions import MAX_RUNNING_ENV, ROLE_JOB, check_pattern, classad_string, max_running_value
from .settings import (
    JOB_WRAPPER,
    PROFILE_DIR,
    Settings,
    check_transferable,
    load_settings,
    profile_default_resources,
    profile_held_timeout,
    software_plan,
)

#: Directory of a run holding its own copy of the workflow (what execute points receive).
STAGE_DIR = "workflow"
#: Per-run settings for job-wrapper.sh, inside STAGE_DIR (names and paths only).
JOB_ENV = "job.env"
#: The cog_pipeline package, copied whole into STAGE_DIR (jobs import it from there).
PACKAGE_DIR = Path(__file__).resolve().parent.parent

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "samples", "*.egg-info")
#: Files of WORKFLOW_DIR (the checkout's top level, or an installed wheel's copy) that the rules
#: refer to (besides the Snakefile).
STAGED_FILES = ("environment.yml",)


def _ignore_in_package(directory: str, names: list[str]) -> set[str]:
    """_IGNORE, plus an installed wheel's own copy of the workflow (``cog_pipeline/workflow``): the
    stage already holds it, next to its copy of the package."""
    ignored = set(_IGNORE(directory, names))
    if "workflow" in names and Path(directory).resolve() == PACKAGE_DIR:
        ignored.add("workflow")
    return ignored


def _compile(package: Path) -> None:
    """Bytecode of the staged package, valid whatever the file times (HTCondor's transfer does not keep them):
    without it every job compiles the package from source again. A job under another Python ignores it."""
    compileall.compile_dir(
        str(package), quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, workers=1
    )


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
        shutil.copytree(PACKAGE_DIR, tmp / "cog_pipeline", ignore=_ignore_in_package)
        _compile(tmp / "cog_pipeline")
        shutil.copy2(JOB_WRAPPER, tmp / JOB_WRAPPER.name)
        (tmp / JOB_WRAPPER.name).chmod(0o755)
        tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PipelineError(f"cannot copy the workflow into {dest}: {exc.strerror or exc}") from None
    return dest


#: Names in a job's directory that a transferred file must not take.
RESERVED_NAMES = frozenset(
    {STAGE_DIR, "run.yaml", "manifests", "status", "logs", "outcome", "env", ".snakemake", "urls", "uploads"}
)


def key_files(run: dict[str, Any]) -> list[Path]:
    """The run's S3 key FILES (absolute paths from run.yaml); their contents are never read here."""
    s3 = run.get("s3") or {}
    paths = [Path(p) for p in (s3.get("access_key_file"), s3.get("secret_key_file")) if p]
    for path in paths:
        check_transferable(str(path), "S3 key file")
        if not path.is_file():
            raise PipelineError(f"S3 key file {path} not found on the access point")
    _check_names(paths, "S3 key files")
    return paths


def ca_bundle_file(run: dict[str, Any]) -> Path | None:
    """The run's CA bundle (``s3.ca_bundle`` of run.yaml, from --ca-bundle or AWS_CA_BUNDLE), or None.

    Jobs receive it by file name in their directory, as the key files; ``s3.ca_bundle`` finds that copy
    when the access point's path does not exist on the execute point.
    """
    path = (run.get("s3") or {}).get("ca_bundle")
    if not path:
        return None
    path = Path(path)
    check_transferable(str(path), "S3 CA bundle (--ca-bundle)")
    if not path.is_file():
        raise PipelineError(f"S3 CA bundle {path} (--ca-bundle) not found on the access point")
    return path


def job_key_files(run: dict[str, Any]) -> list[Path]:
    """The key files a batch job receives: none with presigned transfers (s3.transfer, the default on a pool:
    the access point signs each request, docs/htcondor.md), the run's key files with ``direct``."""
    if transfer_mode(run, "htcondor") == PRESIGNED:
        return []
    return key_files(run)


def transfer_files(run: dict[str, Any]) -> list[Path]:
    """Every file of run.yaml's ``s3:`` section a job needs: the key files (direct transfers only), then the CA
    bundle if any."""
    paths = job_key_files(run)
    bundle = ca_bundle_file(run)
    if bundle is not None:
        paths.append(bundle)
        _check_names(paths, "S3 key files and CA bundle")
    return paths


def _check_names(paths: list[Path], what: str) -> None:
    names = [p.name for p in paths]
    if len(set(names)) != len(names) or RESERVED_NAMES & set(names):
        raise PipelineError(
            f"{what} {', '.join(map(str, paths))}: jobs receive them by file name, so the "
            f"names must differ from each other and from {', '.join(sorted(RESERVED_NAMES))}"
        )


def _run_yaml(run_dir: Path) -> dict[str, Any]:
    """The run's config as Snakemake sees it (:attr:`RunDir.config`: the defaults deep-merged with run.yaml,
    validated); PipelineError naming the file when it is missing or refused."""
    return RunDir(run_dir).config.data


def write_job_env(stage: Path, env: dict[str, str]) -> Path:
    """Write the job wrapper's settings (shell assignments of names and paths, never secrets)."""
    path = Path(stage) / JOB_ENV
    lines = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    path.write_text(
        "# written by cog_pipeline.htcondor.snakemake_args; sourced by job-wrapper.sh\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
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
    if isinstance(value, (bool, int, float)):
        return f"{name}={value}"
    return f"{name}={str(value)!r}"


def _classad_inner(value: str) -> str:
    """The plugin writes ``+X = "<value>"`` verbatim: give it an escaped ClassAd string body."""
    return classad_string(value)[1:-1]


def job_resources(run_dir: Path, run_id: str, pattern: str, settings: Settings) -> dict[str, Any]:
    """The default resources of every job of a run: the profile's, plus tags and per-run transfers."""
    run_dir = Path(run_dir).resolve()
    plan = software_plan(settings.software)
    files = transfer_files(_run_yaml(run_dir))
    resources = profile_default_resources()
    static = [f.strip() for f in str(resources.get("htcondor_transfer_input_files", "")).split(",") if f.strip()]
    resources["htcondor_transfer_input_files"] = ",".join(static + [str(f) for f in files] + plan.transfer)
    resources.update(plan.resources)
    resources["classad_CogPipeline"] = True
    resources["classad_CogPipelineRole"] = ROLE_JOB
    resources["classad_CogPipelinePattern"] = _classad_inner(check_pattern(pattern))
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
    names = [k.name for k in job_key_files(_run_yaml(run_dir))]
    write_job_env(stage, {**plan.wrapper_env, "COG_PIPELINE_PRIVATE_FILES": " ".join(names)})
    args = [
        "--profile",
        str(PROFILE_DIR),
        "--snakefile",
        str(stage / "Snakefile"),
        "--directory",
        ".",
        "--nolock",  # one driver per run (submit_driver); a restarted driver must not trip on a stale lock
        "--htcondor-jobdir",
        str(fresh_jobdir(run_dir)),
        "--htcondor-held-timeout",
        str(profile_held_timeout()),
        "--default-resources",
        *[_resource_arg(k, v) for k, v in resources.items()],
    ]
    limit = jobs if jobs is not None else _run_yaml(run_dir).get("max_running")
    if limit is None:
        limit = os.environ.get(MAX_RUNNING_ENV) or None
    if limit is not None:
        args += ["--jobs", str(max_running_value(limit, "max_running"))]
    return args
