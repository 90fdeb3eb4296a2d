"""Site settings for the pool (profiles/htcondor/cog-pipeline.yaml): software delivery and the
hold policy, and what the Snakemake profile (profiles/htcondor/config.yaml) says that they depend on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.core.errors import PipelineError
from .descriptions import HELD, SETTINGS_ENV, exception_text

PROFILE_DIR = WORKFLOW_DIR / "profiles" / "htcondor"
PROFILE_CONFIG = PROFILE_DIR / "config.yaml"
JOB_WRAPPER = PROFILE_DIR / "job-wrapper.sh"
DEFAULT_SETTINGS = PROFILE_DIR / "cog-pipeline.yaml"

# HoldReasonCode values never released or removed by the policy: a user's condor_hold, spooling.
_USER_HOLD_CODES = (1, 16)

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
        wait = (
            f"ifThenElse({backoff} < {self.backoff_cap_seconds}, {backoff}, {self.backoff_cap_seconds})"
            f" + (ClusterId % {self.jitter_slots}) * {self.jitter_seconds}"
        )
        return f"{self._eligible()} && NumHolds < {self.max_holds} && (time() - EnteredCurrentStatus) >= {wait}"

    def remove_expression(self) -> str:
        """``PeriodicRemove``: the max_holds-th hold, or held longer than remove_after_held_seconds."""
        return (
            f"{self._eligible()} && (NumHolds >= {self.max_holds} || "
            f"(time() - EnteredCurrentStatus) >= {self.remove_after_held_seconds})"
        )

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


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from ``path``; PipelineError naming ``what`` and the path otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PipelineError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{what} {path} is not valid YAML: {exception_text(exc)}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{what} {path} must be a mapping")
    return data


def load_settings(path: Path | None = None) -> Settings:
    """Read and check the settings file (PipelineError on anything wrong)."""
    path = Path(path) if path else settings_path()
    data = read_yaml(path, "HTCondor settings file")
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
    if (
        min(
            policy.max_holds,
            policy.backoff_seconds,
            policy.backoff_cap_seconds,
            policy.jitter_slots,
            policy.poll_seconds,
        )
        < 1
        or policy.jitter_seconds < 0
    ):
        raise PipelineError(f"{path}: hold_policy values must be positive")
    if policy.remove_after_held_seconds <= policy.longest_wait():
        raise PipelineError(
            f"{path}: hold_policy.remove_after_held_seconds must exceed the longest backoff ({policy.longest_wait()} s)"
        )
    held_timeout = profile_held_timeout()
    if held_timeout <= policy.remove_after_held_seconds:
        raise PipelineError(
            f"{PROFILE_CONFIG}: htcondor-held-timeout ({held_timeout} s) must exceed "
            f"hold_policy.remove_after_held_seconds ({policy.remove_after_held_seconds} s) in {path}"
        )
    return Settings(software=software, hold_policy=policy, path=path)


def load_profile() -> dict[str, Any]:
    """profiles/htcondor/config.yaml."""
    return read_yaml(PROFILE_CONFIG, "Snakemake profile")


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


def check_transferable(path: str, what: str) -> None:
    """Refuse a path HTCondor's comma-separated transfer list cannot carry (relative, spaces, commas)."""
    if any(c in path for c in ", \t") or not Path(path).is_absolute():
        raise PipelineError(
            f"{what} {path!r} cannot be transferred by HTCondor: use an absolute path without spaces or commas"
        )


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
            raise PipelineError(
                f"software.mode tarball needs software.tarball: the absolute path of a conda-pack "
                f"or venv-pack archive (settings file {settings_path()})"
            )
        if not tarball.is_file():
            raise PipelineError(f"environment archive {tarball} not found (software.tarball in {settings_path()})")
        check_transferable(str(tarball), "software.tarball")
        return SoftwarePlan(
            [str(tarball)], {}, {"COG_PIPELINE_SOFTWARE": "tarball", "COG_PIPELINE_ENV_TARBALL": tarball.name}
        )
    if software.mode == "container":
        if not software.container_image:
            raise PipelineError(
                f"software.mode container needs software.container_image (settings file {settings_path()})"
            )
        return SoftwarePlan(
            [],
            {"universe": "container", "container_image": software.container_image},
            {"COG_PIPELINE_SOFTWARE": "container", "COG_PIPELINE_PYTHON": software.python or "python3"},
        )
    return SoftwarePlan(
        [], {}, {"COG_PIPELINE_SOFTWARE": "shared", "COG_PIPELINE_PYTHON": software.python or sys.executable}
    )
