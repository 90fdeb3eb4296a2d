"""HTCondor submission without HTCondor daemons.

Submit descriptions are built with ``htcondor2.Submit`` and turned into the job ClassAds HTCondor
would queue with the version-1 bindings' ``Submit.jobs()`` (works offline), so assertions are on
parsed values, not on our own strings. What the Snakemake plugin would submit for a batch job is
captured by replacing ``htcondor2.Schedd`` with an object that records the description and REFUSES
it: the run fails and nothing is submitted anywhere. None of this is a test of a real pool
(docs/htcondor.md lists what still needs one).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import classad2
    import htcondor  # version-1 bindings: Submit.jobs() materializes job ads without a schedd
    import htcondor2

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline import htcondor as h
from cog_pipeline.core.errors import PipelineError

ACCESS_SENTINEL = "AKIA-SENTINEL-ACCESS-0c9f"
SECRET_SENTINEL = "SENTINEL/SECRET+value=5e1d"
RUN_ID = "20260101-000000"
PATTERN = "*raw.csv"
ROWS_M1, ROWS_M2 = 45, 3


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def job_ad(description, cluster: int = 4242):
    """The job ClassAd HTCondor makes of a submit description (text of htcondor2.Submit), as a classad2 ad."""
    ad = next(iter(htcondor.Submit(str(description)).jobs(count=1, clusterid=cluster)))
    return classad2.parseOne(ad.printJson(), classad2.ParserType.JSON)


def parse_v2(raw: str) -> list[str]:
    """Split HTCondor's V2 argument/environment syntax (as stored in a job ad) into words."""
    words, cur, started, quoted, i = [], [], False, False, 0
    while i < len(raw):
        c = raw[i]
        if quoted:
            if c == "'" and raw[i + 1 : i + 2] == "'":
                cur.append("'")
                i += 2
                continue
            if c == "'":
                quoted = False
            else:
                cur.append(c)
        elif c == "'":
            quoted = started = True
        elif c in " \t":
            if cur or started:
                words.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(c)
        i += 1
    if cur or started:
        words.append("".join(cur))
    return words


def ad_environment(ad) -> dict[str, str]:
    return dict(word.split("=", 1) for word in parse_v2(ad["Environment"]))


def matches(constraint: str, ad) -> bool:
    return classad2.ExprTree(constraint).eval(ad) is True


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert ACCESS_SENTINEL not in text
        assert SECRET_SENTINEL not in text


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: no schedd can be found, no cloud credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "_CONDOR_"))}
    env.update(CONDOR_CONFIG=os.devnull, **extra)
    return env


def default_resources(args: list[str]) -> dict[str, object]:
    i = args.index("--default-resources") + 1
    values = {}
    while i < len(args) and not args[i].startswith("--"):
        name, value = args[i].split("=", 1)
        values[name] = ast.literal_eval(value)
        i += 1
    return values


def option(args: list[str], name: str) -> str:
    return args[len(args) - 1 - args[::-1].index(name) + 1]


@pytest.fixture(autouse=True)
def no_schedd(monkeypatch):
    """No HTCondor configuration: any attempt to reach a schedd fails, as in CI."""
    monkeypatch.setenv("CONDOR_CONFIG", os.devnull)
    monkeypatch.delenv(h.SETTINGS_ENV, raising=False)
    monkeypatch.delenv(h.MAX_RUNNING_ENV, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_SENTINEL)  # must never be copied anywhere
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    htcondor2.reload_config()


@pytest.fixture
def keys(tmp_path):
    from conftest import write_key_files

    return write_key_files(tmp_path / "keys", ACCESS_SENTINEL, SECRET_SENTINEL, names=("access.key", "secret.key"))


@pytest.fixture
def ca_bundle(tmp_path):
    """A site CA's PEM bundle on the access point (what --ca-bundle names)."""
    path = tmp_path / "tls" / "site-ca.pem"
    path.parent.mkdir()
    path.write_text("-----BEGIN CERTIFICATE-----\nSITE-CA\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture
def run_dir(tmp_path, keys, ca_bundle):
    """A run directory as the tick makes it: run.yaml (key and CA FILE paths only) and two claimed manifests."""
    run = tmp_path / "work" / f"workflow-run-{RUN_ID}"
    (run / "manifests").mkdir(parents=True)
    (run / "logs").mkdir()
    manifests = []
    for mid, stem, rows in (("m1", "county/a-", ROWS_M1), ("m2", "b-", ROWS_M2)):
        name = f"{stem.rsplit('/', 1)[-1]}processing-{RUN_ID}.csv"
        (run / "manifests" / name).write_text("".join(f"{stem}img_{i}.tif,3\n" for i in range(rows)))
        manifests.append(
            {
                "id": mid,
                "csv": f"manifests/{name}",
                "key": f"{stem}processing-{RUN_ID}.csv",
                "raw_key": f"{stem}raw.csv",
                "stem": stem,
                "timestamp": RUN_ID,
            }
        )
    config = {
        "run_id": RUN_ID,
        "pattern": PATTERN,
        "s3": {
            "endpoint_url": "http://127.0.0.1:9",
            "region": "us-east-1",
            "input_bucket": "in-bucket",
            "output_bucket": "out-bucket",
            "access_key_file": str(keys[0]),
            "secret_key_file": str(keys[1]),
            "ca_bundle": str(ca_bundle),
            "checksums": "auto",
            "delete_fallback": "refuse",
            # the key files go with the jobs (the default on a pool, presigned, sends none:
            # tests/faults/test_faults_secrets.py)
            "transfer": "direct",
        },
        "manifests": manifests,
    }
    (run / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run


def expected_batches() -> int:
    size = int(yaml.safe_load((WORKFLOW_DIR / "config" / "config.yaml").read_text())["batch_size"])
    return math.ceil(ROWS_M1 / size) + math.ceil(ROWS_M2 / size)


def tick_argv(keys) -> list[str]:
    return [
        "tick",
        "--input-bucket",
        "in-bucket",
        "--output-bucket",
        "out-bucket",
        "-p",
        PATTERN,
        "-a",
        str(keys[0]),
        "-s",
        str(keys[1]),
        "-e",
        "s3.example.org",
    ]


# ---------------------------------------------------------------------------------------------
# the Crondor
# ---------------------------------------------------------------------------------------------


def test_crondor_description(tmp_path, keys):
    desc = h.crondor_submit(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path)
    assert isinstance(desc, htcondor2.Submit)
    ad = job_ad(desc, cluster=17)
    assert ad["JobUniverse"] == 12  # local
    assert ad["Cmd"] == str(h.entry_point()) and Path(ad["Cmd"]).is_absolute()
    assert (ad["CronMinute"], ad["CronHour"], ad["CronDayOfMonth"], ad["CronMonth"], ad["CronDayOfWeek"]) == (
        "*/15",
        "*",
        "*",
        "*",
        "*",
    )
    assert ad["OnExitRemove"] is False
    assert ad["JobBatchName"] == "COG-Pipeline-Crondor-*raw.csv"
    assert ad["Iwd"] == str(tmp_path.resolve())
    for attr, ext in (("UserLog", "log"), ("Out", "out"), ("Err", "err")):
        assert ad[attr] == str(tmp_path.resolve() / f"crondor_17.{ext}")
    args = parse_v2(ad["Arguments"])
    assert args[0] == "tick"
    assert option(args, "--executor") == "htcondor"
    assert option(args, "--workdir") == str(tmp_path.resolve())
    assert option(args, "-p") == PATTERN
    assert option(args, "-a") == str(keys[0]) and option(args, "-s") == str(keys[1])
    assert (ad["CogPipeline"], ad["CogPipelinePattern"], ad["CogPipelineRole"]) == (True, PATTERN, "crondor")
    assert "CogPipelineRun" not in ad
    assert matches(h.pattern_constraint(PATTERN), ad)
    assert not matches(h.pattern_constraint("*RAW.csv"), ad)  # =?= is case-sensitive
    env = ad_environment(ad)
    assert set(env) <= {"PATH", "HOME", "CONDOR_CONFIG"} and "PATH" in env
    assert "CONDOR_CONFIG" not in env  # /dev/null (no configuration) is not passed on
    assert not ad.get("GetEnv")
    assert_no_secret(str(desc), str(ad))


@pytest.mark.parametrize(
    "every, minute, hour", [(15, "*/15", "*"), (5, "*/5", "*"), (60, "0", "*/1"), (120, "0", "*/2"), (1440, "0", "0")]
)
def test_crondor_every(tmp_path, keys, every, minute, hour):
    ad = job_ad(h.crondor_submit(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path, every_minutes=every))
    assert (ad["CronMinute"], ad["CronHour"]) == (minute, hour)


@pytest.mark.parametrize("every", [0, 61, 90, 300, 2000])
def test_crondor_every_rejects_irregular_periods(tmp_path, keys, every):
    with pytest.raises(PipelineError, match="--every"):
        h.crondor_submit(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path, every_minutes=every)


def test_crondor_max_running_and_passthrough(tmp_path, keys, monkeypatch):
    settings = tmp_path / "site.yaml"
    shutil.copy(h.DEFAULT_SETTINGS, settings)
    monkeypatch.setenv(h.SETTINGS_ENV, str(settings))
    monkeypatch.setenv("CONDOR_CONFIG", "/etc/condor/condor_config")
    monkeypatch.setenv("SOME_TOKEN", "do-not-copy")
    ad = job_ad(h.crondor_submit(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path, max_running=7))
    env = ad_environment(ad)
    assert env[h.MAX_RUNNING_ENV] == "7" and ad["CogPipelineMaxRunning"] == 7
    assert env["CONDOR_CONFIG"] == "/etc/condor/condor_config" and env[h.SETTINGS_ENV] == str(settings)
    assert "SOME_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "--max-running" not in parse_v2(ad["Arguments"])  # the tick needs no new flag
    with pytest.raises(PipelineError, match="at least 1"):
        h.crondor_submit(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path, max_running=0)


def test_tick_arguments_force_htcondor_and_check_pattern(tmp_path, keys):
    argv = [*tick_argv(keys), "--executor", "local", "--workdir=/elsewhere"]
    args = h.tick_arguments(argv, PATTERN, tmp_path)
    assert args.count("--executor") == 1 and option(args, "--executor") == "htcondor"
    assert f"--workdir={tmp_path}" in args
    assert h.tick_arguments(["--input-bucket", "x"], PATTERN, tmp_path)[:1] == ["tick"]
    with pytest.raises(PipelineError, match="pattern"):
        h.tick_arguments(tick_argv(keys), "*other.csv", tmp_path)


@pytest.mark.parametrize("pattern", ["*ra\"w $(X) 'q'.csv", "dir with space/*raw.csv", "*ré-ü.csv"])
def test_awkward_patterns_round_trip(tmp_path, keys, pattern):
    argv = [a if a != PATTERN else pattern for a in tick_argv(keys)]
    ad = job_ad(h.crondor_submit(tick_argv=argv, pattern=pattern, workdir=tmp_path))
    assert option(parse_v2(ad["Arguments"]), "-p") == pattern
    assert ad["CogPipelinePattern"] == pattern
    assert ad["JobBatchName"] == h.CRONDOR_BATCH_PREFIX + pattern
    assert matches(h.pattern_constraint(pattern), ad)
    assert not matches(h.pattern_constraint(PATTERN), ad)


def test_newlines_and_backslashes_are_refused(tmp_path, keys):
    with pytest.raises(PipelineError, match="single line"):
        h.crondor_submit(tick_argv=tick_argv(keys), pattern="a\nqueue 100", workdir=tmp_path)
    with pytest.raises(PipelineError, match="backslash"):  # old ClassAd syntax would double it
        h.crondor_submit(tick_argv=["tick"], pattern="a\\b*.csv", workdir=tmp_path)


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


def test_driver_description(run_dir):
    drive_argv = ["drive", str(run_dir), "--executor", "htcondor"]
    desc = h.driver_submit(run_dir=run_dir, pattern=PATTERN, run_id=RUN_ID, drive_argv=drive_argv)
    ad = job_ad(desc, cluster=99)
    assert ad["JobUniverse"] == 12
    assert ad["Cmd"] == sys.executable
    assert parse_v2(ad["Arguments"]) == [
        "-m",
        "cog_pipeline.htcondor",
        "supervise",
        "--run-id",
        RUN_ID,
        "--",
        str(h.entry_point()),
        *drive_argv,
    ]
    assert ad["Iwd"] == str(run_dir.resolve())
    for attr, ext in (("UserLog", "log"), ("Out", "out"), ("Err", "err")):
        assert ad[attr] == str(run_dir.resolve() / "logs" / f"driver_99.{ext}")
    assert ad["JobBatchName"] == "COG-Pipeline-DAG-*raw.csv"
    assert (ad["CogPipeline"], ad["CogPipelinePattern"], ad["CogPipelineRole"], ad["CogPipelineRun"]) == (
        True,
        PATTERN,
        "driver",
        RUN_ID,
    )
    assert matches(h.run_constraint(RUN_ID), ad) and matches(h.pattern_constraint(PATTERN), ad)
    assert not matches(h.run_constraint("20260101-000001"), ad)
    assert "CronMinute" not in ad and ad.get("OnExitRemove", True) is True  # runs once, leaves the queue
    assert set(ad_environment(ad)) <= {"PATH", "HOME", "CONDOR_CONFIG", h.SETTINGS_ENV, h.MAX_RUNNING_ENV}
    assert_no_secret(str(desc), str(ad))


# ---------------------------------------------------------------------------------------------
# no schedd: clear errors, no traceback
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["check_schedd", "submit", "start_crondor", "stop_pipeline", "submit_driver", "cleanup_run", "apply_hold_policy"],
)
def test_no_schedd_raises_pipeline_error(name, tmp_path, keys, run_dir):
    calls = {
        "check_schedd": h.check_schedd,
        "submit": lambda: h.submit(htcondor2.Submit({"executable": "/bin/true"})),
        "start_crondor": lambda: h.start_crondor(tick_argv=tick_argv(keys), pattern=PATTERN, workdir=tmp_path),
        "stop_pipeline": lambda: h.stop_pipeline(PATTERN),
        "submit_driver": lambda: h.submit_driver(run_dir, PATTERN, RUN_ID, ["drive", str(run_dir)]),
        "cleanup_run": lambda: h.cleanup_run(RUN_ID),
        "apply_hold_policy": lambda: h.apply_hold_policy(RUN_ID),
    }
    with pytest.raises(
        PipelineError,
        match=r"^No HTCondor schedd reachable \(is this an access point\? "
        r"is CONDOR_CONFIG set\?\): .+",
    ):
        calls[name]()


def test_no_schedd_command_line_has_no_traceback(run_dir):
    result = subprocess.run(
        [sys.executable, "-m", "cog_pipeline.htcondor", "submit-driver", str(run_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: No HTCondor schedd reachable")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# hold policy (evaluated by classad2 as the schedd would)
# ---------------------------------------------------------------------------------------------


def held_ad(
    policy: h.HoldPolicy, *, holds: int, held_for: int, cluster: int = 10, code: int = 13, status: int = h.HELD
):
    ad = classad2.ClassAd()
    now = int(classad2.ExprTree("time()").eval())
    ad.update(
        {
            "JobStatus": status,
            "HoldReasonCode": code,
            "NumHolds": holds,
            "ClusterId": cluster,
            "EnteredCurrentStatus": now - held_for,
        }
    )
    ad["PeriodicRelease"] = classad2.ExprTree(policy.release_expression())
    ad["PeriodicRemove"] = classad2.ExprTree(policy.remove_expression())
    return ad


@pytest.mark.parametrize(
    "holds, held_for, cluster, release, remove",
    [
        (1, 30, 10, False, False),  # first hold: waits 60 s (cluster 10 -> no jitter)
        (1, 61, 10, True, False),
        (1, 61, 12, False, False),  # cluster 12 -> +2 * 15 s jitter
        (1, 91, 12, True, False),
        (2, 100, 10, False, False),  # second hold: 120 s
        (2, 121, 10, True, False),
        (3, 241, 10, True, False),  # 240 s
        (4, 479, 10, False, False),  # 480 s (cap)
        (4, 481, 10, True, False),
        (5, 10, 10, False, True),  # 5th hold: removed, never released
        (2, 901, 10, True, True),  # held too long: removed before the plugin's held timeout
    ],
)
def test_hold_policy_backoff(holds, held_for, cluster, release, remove):
    ad = held_ad(h.HoldPolicy(), holds=holds, held_for=held_for, cluster=cluster)
    assert ad.eval("PeriodicRelease") is release
    assert ad.eval("PeriodicRemove") is remove


def test_hold_policy_leaves_user_holds_and_running_jobs_alone():
    policy = h.HoldPolicy()
    user_hold = held_ad(policy, holds=5, held_for=5000, code=1)
    assert user_hold.eval("PeriodicRelease") is False and user_hold.eval("PeriodicRemove") is False
    running = held_ad(policy, holds=5, held_for=5000, status=h.RUNNING)
    assert running.eval("PeriodicRelease") is False and running.eval("PeriodicRemove") is False


def test_profile_held_timeout_exceeds_hold_policy():
    settings = h.load_settings()
    assert h.profile_held_timeout() < 4 * 3600  # short, not the plugin's 4 h default
    assert h.profile_held_timeout() > settings.hold_policy.remove_after_held_seconds
    assert settings.hold_policy.remove_after_held_seconds > settings.hold_policy.longest_wait()


# ---------------------------------------------------------------------------------------------
# settings and software delivery
# ---------------------------------------------------------------------------------------------


def write_settings(tmp_path, monkeypatch, **software) -> Path:
    data = yaml.safe_load(h.DEFAULT_SETTINGS.read_text())
    data["software"].update(software)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(h.SETTINGS_ENV, str(path))
    return path


def test_software_shared_default():
    plan = h.software_plan(h.load_settings().software)
    assert plan.wrapper_env == {"COG_PIPELINE_SOFTWARE": "shared", "COG_PIPELINE_PYTHON": sys.executable}
    assert plan.transfer == [] and plan.resources == {}


def test_software_tarball(tmp_path, monkeypatch):
    archive = tmp_path / "cog-env.tar.gz"
    write_settings(tmp_path, monkeypatch, mode="tarball", tarball=str(archive))
    with pytest.raises(PipelineError, match="not found"):
        h.software_plan(h.load_settings().software)
    archive.write_bytes(b"")
    plan = h.software_plan(h.load_settings().software)
    assert plan.transfer == [str(archive)]
    assert plan.wrapper_env == {"COG_PIPELINE_SOFTWARE": "tarball", "COG_PIPELINE_ENV_TARBALL": "cog-env.tar.gz"}
    write_settings(tmp_path, monkeypatch, mode="tarball", tarball="relative.tar.gz")
    with pytest.raises(PipelineError, match="absolute path"):
        h.software_plan(h.load_settings().software)


def test_software_container(tmp_path, monkeypatch):
    write_settings(tmp_path, monkeypatch, mode="container")
    with pytest.raises(PipelineError, match="container_image"):
        h.software_plan(h.load_settings().software)
    write_settings(tmp_path, monkeypatch, mode="container", container_image="docker://example.org/cog:1")
    plan = h.software_plan(h.load_settings().software)
    assert plan.resources == {"universe": "container", "container_image": "docker://example.org/cog:1"}
    assert plan.wrapper_env["COG_PIPELINE_PYTHON"] == "python3"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"software": {"mode": "conda"}}, "software.mode"),
        ({"software": {"colour": "red"}}, "unknown settings"),
        ({"hold_policy": {"max_holds": "many"}}, "whole numbers"),
        ({"hold_policy": {"remove_after_held_seconds": 300}}, "longest backoff"),
        ({"hold_policy": {"remove_after_held_seconds": 5000}}, "htcondor-held-timeout"),
    ],
)
def test_bad_settings_are_reported(tmp_path, monkeypatch, change, message):
    data = yaml.safe_load(h.DEFAULT_SETTINGS.read_text())
    for section, values in change.items():
        data[section].update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(h.SETTINGS_ENV, str(path))
    with pytest.raises(PipelineError, match=message):
        h.load_settings()


# ---------------------------------------------------------------------------------------------
# the run directory and Snakemake's arguments
# ---------------------------------------------------------------------------------------------


def test_stage_workflow(run_dir):
    stage = h.stage_workflow(run_dir)
    assert stage == run_dir.resolve() / "workflow"
    for rel in (
        "Snakefile",
        "rules",
        "scripts",
        "config/config.yaml",
        "config/config.schema.yaml",
        "cog_pipeline/__init__.py",
        "cog_pipeline/htcondor/__main__.py",
    ):
        assert (stage / rel).exists(), rel
    assert os.access(stage / "job-wrapper.sh", os.X_OK)
    assert not (stage / "cog_pipeline" / "samples").exists()
    # No bytecode copied from the source tree (another Python's, or stale); the package's own compiled for the
    # jobs, hash-based and unchecked (flags 1): HTCondor's transfer changes the file times a check would compare.
    assert not [p for p in stage.rglob("__pycache__") if "cog_pipeline" not in p.relative_to(stage).parts]
    modules = sorted((stage / "cog_pipeline").rglob("*.py"))
    tag = sys.implementation.cache_tag
    for module in modules:
        pyc = module.parent / "__pycache__" / f"{module.stem}.{tag}.pyc"
        assert pyc.is_file(), pyc
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 1, pyc
    (stage / "Snakefile").write_text("# this run's own version\n")
    assert h.stage_workflow(run_dir) == stage
    assert (stage / "Snakefile").read_text() == "# this run's own version\n"  # a run keeps its copy


def test_staged_rules_refer_only_to_staged_files(run_dir):
    """Every relative path a staged rule file names (``conda: "../environment.yml"``) exists in the stage.

    Seen on a real pool: without environment.yml in the run's copy, Snakemake could not record the
    metadata of a batch job that had succeeded, reported it as failed and exited 1.
    """
    stage = h.stage_workflow(run_dir)
    named = []
    for rule_file in sorted((stage / "rules").glob("*.smk")):
        for rel in re.findall(r"""["'](\.\./[^"']+)["']""", rule_file.read_text()):
            named.append(rel)
            assert (rule_file.parent / rel).resolve().is_relative_to(stage), (rule_file.name, rel)
            assert (rule_file.parent / rel).exists(), (rule_file.name, rel)
    assert "../environment.yml" in named


def test_snakemake_args(run_dir, keys, ca_bundle):
    args = h.snakemake_args(run_dir, RUN_ID, PATTERN)
    stage = run_dir.resolve() / "workflow"
    assert option(args, "--profile") == str(h.PROFILE_DIR)
    assert option(args, "--snakefile") == str(stage / "Snakefile")
    assert option(args, "--directory") == "."
    assert int(option(args, "--htcondor-held-timeout")) == h.profile_held_timeout()
    jobdir = Path(option(args, "--htcondor-jobdir"))
    assert jobdir.is_dir() and not any(jobdir.iterdir())
    assert jobdir.parent == run_dir.resolve() / "logs" / "htcondor"
    again = Path(option(h.snakemake_args(run_dir, RUN_ID, PATTERN), "--htcondor-jobdir"))
    assert again != jobdir and again.is_dir()  # fresh per invocation (upstream #60)
    assert "--jobs" not in args  # the profile's value

    res = default_resources(args)
    profile = h.profile_default_resources()
    assert res["job_wrapper"] == profile["job_wrapper"] == "workflow/job-wrapper.sh"
    assert res["htcondor_request_mem_mb"] == profile["htcondor_request_mem_mb"]
    assert (
        res["classad_CogPipeline"],
        res["classad_CogPipelineRole"],
        res["classad_CogPipelinePattern"],
        res["classad_CogPipelineRun"],
    ) == (True, "job", PATTERN, RUN_ID)
    transfer = res["htcondor_transfer_input_files"].split(",")
    assert str(keys[0]) in transfer and str(keys[1]) in transfer
    assert str(ca_bundle) in transfer  # the site CA reaches every batch job, by file name
    for rel in (t for t in transfer if not os.path.isabs(t)):
        assert (run_dir / rel).exists(), f"{rel} is listed for transfer but missing from the run directory"

    job_env = (stage / h.JOB_ENV).read_text()
    assert "COG_PIPELINE_PRIVATE_FILES='access.key secret.key'" in job_env  # the CA bundle is no secret
    assert_no_secret(" ".join(args), job_env)


def test_snakemake_args_jobs(run_dir, monkeypatch):
    monkeypatch.setenv(h.MAX_RUNNING_ENV, "9")
    assert option(h.snakemake_args(run_dir, RUN_ID, PATTERN), "--jobs") == "9"
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    (run_dir / "run.yaml").write_text(yaml.safe_dump({**config, "max_running": 4}))
    assert option(h.snakemake_args(run_dir, RUN_ID, PATTERN), "--jobs") == "4"
    assert option(h.snakemake_args(run_dir, RUN_ID, PATTERN, jobs=2), "--jobs") == "2"


def test_key_files_must_be_transferable(run_dir, tmp_path):
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "access.key").write_text("x")
    for bad, message in (
        (str(other / "access.key"), "names must differ"),
        (str(tmp_path / "missing.key"), "not found"),
        (str(tmp_path / "a,b.key"), "without spaces or commas"),
    ):
        config["s3"]["secret_key_file"] = bad
        (run_dir / "run.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(PipelineError, match=message):
            h.snakemake_args(run_dir, RUN_ID, PATTERN)


def test_ca_bundle_must_be_transferable(run_dir, tmp_path):
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.key").write_text("not a CA")
    (other / "run.yaml").write_text("not a CA")
    for bad, message in (
        (str(other / "secret.key"), "names must differ"),  # a key file's name
        (str(other / "run.yaml"), "names must differ"),  # a name the job's directory has
        (str(tmp_path / "missing-ca.pem"), r"CA bundle .*missing-ca\.pem \(--ca-bundle\) not found"),
        (str(tmp_path / "a,b.pem"), "without spaces or commas"),
        ("relative-ca.pem", "absolute path"),
    ):
        config["s3"]["ca_bundle"] = bad
        (run_dir / "run.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(PipelineError, match=message):
            h.snakemake_args(run_dir, RUN_ID, PATTERN)


def test_no_ca_bundle_transfers_only_the_keys(run_dir, keys, ca_bundle):
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert h.transfer_files(config) == [keys[0], keys[1], ca_bundle]
    config["s3"]["ca_bundle"] = None
    (run_dir / "run.yaml").write_text(yaml.safe_dump(config))
    assert h.transfer_files(config) == [keys[0], keys[1]]
    transfer = default_resources(h.snakemake_args(run_dir, RUN_ID, PATTERN))["htcondor_transfer_input_files"]
    assert ca_bundle.name not in transfer


def test_ca_bundle_resolves_to_the_transferred_copy(run_dir, ca_bundle, tmp_path, monkeypatch):
    """On an execute point the access point's path does not exist: the copy HTCondor put in the job's
    directory (by file name, like the key files) is used."""
    from cog_pipeline.storage import s3

    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    config["s3"]["ca_bundle"] = str(tmp_path / "access-point-only" / ca_bundle.name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shutil.copy(ca_bundle, scratch / ca_bundle.name)
    monkeypatch.chdir(scratch)
    assert s3.ca_bundle(s3.S3Settings.from_config(config["s3"])) == str(scratch / ca_bundle.name)


# ---------------------------------------------------------------------------------------------
# Snakemake: dry runs with the profile, and what the plugin would submit
# ---------------------------------------------------------------------------------------------


def planned_jobs(output: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts:
                break
    return counts


@pytest.mark.slow
def test_manual_dry_run_with_profile(run_dir):
    """The documented manual command: no schedd needed, one convert_batch job per batch."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(WORKFLOW_DIR / "Snakefile"),
        "--profile",
        str(h.PROFILE_DIR),
        "-n",
        "--jobs",
        "3",
    ]
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = planned_jobs(result.stdout + result.stderr)
    assert counts["convert_batch"] == expected_batches()
    assert counts["aggregate"] == 2


@pytest.mark.slow
def test_driver_dry_run_with_htcondor_args(run_dir):
    """The driver's own command line (profile + snakemake_args) plans the same batches offline."""
    from cog_pipeline.control import driver

    cmd = driver.snakemake_command(run_dir, "htcondor", 2, ["-n"])
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_jobs(result.stdout + result.stderr)["convert_batch"] == expected_batches()
    assert_no_secret(result.stdout, result.stderr)


CAPTURE = textwrap.dedent('''
    """Snakemake's CLI with htcondor2.Schedd replaced by a recorder that REFUSES every submission."""
    import json, os, sys, warnings
    warnings.simplefilter("ignore")
    import htcondor2

    class CaptureOnlyNoSubmit:
        def __init__(self, *args, **kwargs):
            pass
        def submit(self, description, *args, **kwargs):
            with open(os.environ["CAPTURE_FILE"], "a") as f:
                f.write(json.dumps(str(description)) + "\\n")
            raise RuntimeError("capture only: nothing was submitted")

    htcondor2.Schedd = CaptureOnlyNoSubmit
    from snakemake.cli import main
    sys.argv = ["snakemake", *sys.argv[1:]]
    main()
''')


@pytest.fixture
def plugin_description(run_dir, tmp_path):
    """The submit description the plugin builds for batch 1 of m1 with the driver's arguments."""
    from cog_pipeline.control import driver

    script, capture = tmp_path / "capture.py", tmp_path / "captured.jsonl"
    script.write_text(CAPTURE)
    cmd = driver.snakemake_command(run_dir, "htcondor", 2, ["--jobs", "1", "status/m1/batch-00001.jsonl"])
    assert cmd[1:3] == ["-m", "snakemake"]
    cmd[1:3] = [str(script)]
    result = subprocess.run(
        cmd, cwd=run_dir, capture_output=True, text=True, timeout=300, env=clean_env(CAPTURE_FILE=str(capture))
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "capture only: nothing was submitted" in output, output
    texts = [json.loads(line) for line in capture.read_text().splitlines()]
    assert len(texts) == 1
    return texts[0], output


@pytest.mark.slow
def test_plugin_job_description(plugin_description, run_dir, keys, ca_bundle, monkeypatch):
    text, output = plugin_description
    monkeypatch.chdir(run_dir)  # the driver's Snakemake submits from the run directory
    ad = job_ad(text, cluster=321)
    assert ad["Cmd"] == str(run_dir.resolve() / "workflow" / "job-wrapper.sh")
    args = ad["Args"].split()  # the plugin writes old-syntax arguments
    assert option(args, "--snakefile") == "workflow/Snakefile"
    assert option(args, "--directory") == "."  # not the access point's path
    assert ad["ShouldTransferFiles"] == "YES" and ad["PreserveRelativePaths"] is True
    transfer_in = [p.strip() for p in ad["TransferInput"].split(",")]
    for rel in (
        "run.yaml",
        "workflow/Snakefile",
        "workflow/config/config.yaml",
        "workflow/rules",
        "workflow/cog_pipeline",
        "workflow/job-wrapper.sh",
        "workflow/job.env",
        f"manifests/a-processing-{RUN_ID}.csv",
    ):
        assert rel in transfer_in, rel
    assert str(keys[0]) in transfer_in and str(keys[1]) in transfer_in
    assert str(ca_bundle) in transfer_in  # the site CA goes to the execute point with the keys
    assert sys.executable not in transfer_in  # the interpreter is never transferred
    transfer_out = [p.strip() for p in ad["TransferOutput"].split(",")]
    assert sorted(transfer_out) == ["logs/convert/m1/batch-00001.log", "status/m1/batch-00001.jsonl"]
    assert (ad["CogPipeline"], ad["CogPipelineRole"], ad["CogPipelinePattern"], ad["CogPipelineRun"]) == (
        True,
        "job",
        PATTERN,
        RUN_ID,
    )
    assert matches(h.run_constraint(RUN_ID), ad) and matches(h.pattern_constraint(PATTERN), ad)
    assert ad["RequestCpus"] >= 1 and ad["RequestMemory"] > 0 and ad["RequestDisk"] > 0
    env = ad["Environment"]
    assert env.startswith("PATH=") and "SENTINEL" not in env and "AWS_" not in env
    assert "getenv = False" in text
    assert_no_secret(text, str(ad), output)
    # Every relative path the plugin transfers exists inside the run directory. This fails while a rule file
    # says ``script: "../scripts/x.py"``: plugin 0.3.0 resolves that against the run directory (not the rule
    # file), lists ``../scripts/x.py`` and the job would be held for a missing input. Fix in rules/*.smk:
    # ``script: os.path.join(workflow.basedir, "scripts", "x.py")``. (One test: one Snakemake run for both.)
    for path in transfer_in:
        if not os.path.isabs(path):
            assert not path.startswith(".."), f"{path}: outside the run directory (see the comment above)"
            assert (run_dir / path).exists(), path


# ---------------------------------------------------------------------------------------------
# the job wrapper (run here with stand-in interpreters)
# ---------------------------------------------------------------------------------------------

FAKE_PYTHON = """#!/bin/sh
{{ echo "ARGS=$*"; echo "PATH=$PATH"; echo "PYTHONPATH=$PYTHONPATH"; echo "CONDOR_CONFIG=$CONDOR_CONFIG"
   ls -l access.key; }} > "$SCRATCH/ran.txt"
exit {code}
"""


@pytest.fixture
def scratch(tmp_path, run_dir):
    """An execute-point scratch directory as HTCondor would fill it for one batch job."""
    stage = h.stage_workflow(run_dir)
    d = tmp_path / "scratch"
    shutil.copytree(stage, d / "workflow")
    (d / "access.key").write_text(ACCESS_SENTINEL)
    (d / "access.key").chmod(0o644)
    (d / ".job.ad").write_text('TransferOutput = "logs/convert/m1/batch-00001.log,status/m1/batch-00001.jsonl"\n')
    return d


def run_wrapper(scratch: Path, job_env: dict[str, str]) -> subprocess.CompletedProcess:
    h.write_job_env(scratch / "workflow", {**job_env, "COG_PIPELINE_PRIVATE_FILES": "access.key"})
    env = {"PATH": '"/usr/bin:/bin"', "SCRATCH": str(scratch), "_CONDOR_JOB_AD": str(scratch / ".job.ad")}
    return subprocess.run(
        ["workflow/job-wrapper.sh", "--snakefile", "workflow/Snakefile", "--cores", "2"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_python(path: Path, code: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON.format(code=code))
    path.chmod(0o755)
    return path


def test_wrapper_failure_leaves_placeholders(scratch, tmp_path):
    py = fake_python(tmp_path / "bin" / "python", code=3)
    result = run_wrapper(scratch, {"COG_PIPELINE_SOFTWARE": "shared", "COG_PIPELINE_PYTHON": str(py)})
    assert result.returncode == 3, result.stderr
    ran = (scratch / "ran.txt").read_text()
    assert "ARGS=-m snakemake --snakefile workflow/Snakefile --cores 2" in ran
    assert "PATH=/usr/bin:/bin:" in ran and '"' not in ran.split("PATH=")[1].splitlines()[0]
    assert f"PYTHONPATH={scratch}/workflow" in ran
    assert "CONDOR_CONFIG=/dev/null" in ran  # no "CONDOR_CONFIG is unset" warning from htcondor2 in the job
    assert "-rw-------" in ran  # key file made private before Python started
    assert not (scratch / "access.key").exists()  # and deleted afterwards
    assert (scratch / "status/m1/batch-00001.jsonl").read_bytes() == b""  # discarded by Snakemake anyway
    # the batch log (where the failed rows' reason points) says why
    assert "snakemake exited with status 3" in (scratch / "logs/convert/m1/batch-00001.log").read_text()
    assert "placeholder" in result.stderr


def test_wrapper_failure_appends_to_an_existing_batch_log(scratch, tmp_path):
    (scratch / "logs/convert/m1").mkdir(parents=True)
    (scratch / "logs/convert/m1/batch-00001.log").write_text("converting...\n")
    py = fake_python(tmp_path / "bin" / "python", code=137)
    result = run_wrapper(scratch, {"COG_PIPELINE_SOFTWARE": "shared", "COG_PIPELINE_PYTHON": str(py)})
    assert result.returncode == 137
    text = (scratch / "logs/convert/m1/batch-00001.log").read_text()
    assert text.startswith("converting...\n") and "snakemake exited with status 137" in text


def test_wrapper_success_from_tarball(scratch, tmp_path):
    env_dir = tmp_path / "packed"
    fake_python(env_dir / "bin" / "python", code=0)
    (env_dir / "bin" / "activate").write_text("VIRTUAL_ENV=packed\n")
    with tarfile.open(scratch / "cog-env.tar.gz", "w:gz") as tar:
        for item in env_dir.iterdir():
            tar.add(item, arcname=item.name)
    result = run_wrapper(scratch, {"COG_PIPELINE_SOFTWARE": "tarball", "COG_PIPELINE_ENV_TARBALL": "cog-env.tar.gz"})
    assert result.returncode == 0, result.stderr
    assert (scratch / "env" / "bin" / "python").is_file()
    assert not (scratch / "cog-env.tar.gz").exists()  # scratch space back
    assert (scratch / "ran.txt").is_file()
    assert not (scratch / "status").exists()  # no placeholders on success


def test_wrapper_missing_tarball_fails_without_hold(scratch):
    result = run_wrapper(scratch, {"COG_PIPELINE_SOFTWARE": "tarball", "COG_PIPELINE_ENV_TARBALL": "nope.tar.gz"})
    assert result.returncode == 1
    assert "was not transferred" in result.stderr
    assert (scratch / "status" / "m1" / "batch-00001.jsonl").is_file()
    assert stat.S_ISREG((scratch / "logs" / "convert" / "m1" / "batch-00001.log").stat().st_mode)
    assert "was not transferred" in (scratch / "logs" / "convert" / "m1" / "batch-00001.log").read_text()


# ---------------------------------------------------------------------------------------------
# the command line (start / stop) without a schedd
# ---------------------------------------------------------------------------------------------


def test_cli_start_and_stop_without_schedd(buckets, settings, tmp_path, capsys):
    from cog_pipeline.ui.cli import main
    from conftest import s3_cli_flags

    code = main(["start", *s3_cli_flags(settings), "--workdir", str(tmp_path), "--max-running", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "error: No HTCondor schedd reachable" in err and "Traceback" not in err
    assert main(["stop", "-p", PATTERN]) == 2
    err = capsys.readouterr().err
    assert "error: No HTCondor schedd reachable" in err and "Traceback" not in err


class EmptySchedd:
    """A schedd whose queue is empty (the Crondor's duplicate check passes); submit is replaced separately."""

    def query(self, constraint=None, projection=None):
        return []


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_cli_start_gives_the_crondor_the_s3_settings(given, keys, ca_bundle, tmp_path, monkeypatch, capsys):
    """The Crondor's environment is explicit: a CA bundle from --ca-bundle or from AWS_CA_BUNDLE reaches the
    tick as ``--ca-bundle <absolute path>``, with the checksum mode and the delete fallback."""
    from cog_pipeline.control import tick
    from cog_pipeline.ui.cli import main

    submitted = []
    monkeypatch.setattr(tick, "connect", lambda opts: None)  # the buckets' check (tested elsewhere)
    monkeypatch.setattr(h.schedd, "connect", EmptySchedd)
    monkeypatch.setattr(h.schedd, "submit", lambda description: submitted.append(description) or 31)
    monkeypatch.chdir(ca_bundle.parent)
    extra = ["--ca-bundle", ca_bundle.name] if given == "flag" else []
    if given == "environment":
        monkeypatch.setenv("AWS_CA_BUNDLE", ca_bundle.name)  # relative to where start runs
    code = main(
        [
            "start",
            "-a",
            str(keys[0]),
            "-s",
            str(keys[1]),
            "-e",
            "s3.example.org",
            "--input-bucket",
            "in-bucket",
            "--output-bucket",
            "out-bucket",
            "--workdir",
            str(tmp_path),
            "--checksums",
            "when_required",
            "--delete-fallback",
            "verify-first",
            *extra,
        ]
    )
    assert code == 0, capsys.readouterr().err
    ad = job_ad(submitted[0], cluster=31)
    args = parse_v2(ad["Arguments"])
    assert args[0] == "tick" and option(args, "--executor") == "htcondor"
    assert option(args, "--ca-bundle") == str(ca_bundle.resolve())
    assert option(args, "--checksums") == "when_required"
    assert option(args, "--delete-fallback") == "verify-first"
    assert "AWS_CA_BUNDLE" not in ad_environment(ad)  # never the environment, copied blindly
    assert "SITE-CA" not in str(submitted[0])  # the path, never the contents
    assert_no_secret(str(submitted[0]), str(ad))


# ---------------------------------------------------------------------------------------------
# the driver's supervisor (its schedd calls fail here: reported, never fatal)
# ---------------------------------------------------------------------------------------------


def supervise(*command: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cog_pipeline.htcondor", "supervise", "--run-id", RUN_ID, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def test_supervisor_returns_the_driver_status():
    proc = supervise(sys.executable, "-c", "import sys; print('driving'); sys.exit(3)")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert "driving" in out
    assert "No HTCondor schedd reachable" in err and "Traceback" not in err  # clean-up attempted, reported


def test_supervisor_forwards_sigterm_to_the_driver(tmp_path):
    marker = tmp_path / "terminated"
    child = (
        f"import signal, sys, time\n"
        f"def bye(*_):\n    open({str(marker)!r}, 'w').close(); sys.exit(143)\n"
        f"signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    proc = supervise(sys.executable, "-c", child)
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()  # what condor_rm does to a local-universe job
    _out, err = proc.communicate(timeout=60)
    assert marker.exists()  # the driver got SIGTERM (and with it its Snakemake, same process group)
    assert proc.returncode == 143
    assert "Traceback" not in err


def test_own_job_id_reads_the_starters_job_ad(tmp_path, monkeypatch):
    ad = tmp_path / ".job.ad"
    ad.write_text('Cmd = "/x"\nClusterId = 39\nProcId = 0\nJobUniverse = 12\n')
    monkeypatch.setenv("_CONDOR_JOB_AD", str(ad))
    assert h.own_job_id() == (39, 0)
    monkeypatch.setenv("_CONDOR_JOB_AD", str(tmp_path / "missing"))
    assert h.own_job_id() is None
    monkeypatch.delenv("_CONDOR_JOB_AD")
    assert h.own_job_id() is None


@pytest.mark.parametrize("status, removed", [(h.REMOVED, True), (h.RUNNING, False), (None, True)])
def test_driver_removed_only_when_its_job_was_removed(monkeypatch, status, removed):
    """A schedd restart SIGTERMs the driver too: its running batch jobs must then stay (seen on a pool:
    removing them orphaned their claims for the 40-minute job lease)."""
    asked = []

    def query(schedd, constraint, projection):
        asked.append(constraint)
        return [] if status is None else [{"JobStatus": status}]

    monkeypatch.setattr(h.schedd, "connect", lambda: object())
    monkeypatch.setattr(h.schedd, "query", query)
    assert h.driver_removed((39, 0)) is removed
    assert asked == ["ClusterId == 39 && ProcId == 0"]
    assert h.driver_removed(None) is True  # run by hand: a signal means stop


def test_driver_not_removed_when_no_schedd_answers(no_schedd):
    assert h.driver_removed((39, 0)) is False  # the schedd is shutting down: jobs will be reconnected


@pytest.mark.parametrize("ads, queued", [([], False), ([{"ClusterId": 41}], True)])
def test_a_stalled_pool_run_is_resumed_only_when_none_of_its_jobs_is_queued(monkeypatch, ads, queued):
    """Recovery asks the queue before resuming a pool run (a run whose driver is queued is not stalled)."""
    from cog_pipeline.control import recovery

    asked = []
    monkeypatch.setattr(h.schedd, "connect", lambda: object())
    monkeypatch.setattr(h.schedd, "query", lambda schedd, constraint, projection: asked.append(constraint) or ads)
    assert h.run_has_jobs(RUN_ID) is queued
    assert recovery._queued_on_pool(RUN_ID) is queued
    assert asked[0] == f"{h.run_constraint(RUN_ID)} && JobStatus =!= {h.REMOVED} && JobStatus =!= {h.COMPLETED}"


def test_a_pool_run_is_left_alone_when_no_schedd_answers(no_schedd):
    from cog_pipeline.control import recovery

    assert recovery._queued_on_pool(RUN_ID) is True  # unknown means "do not touch"


def test_supervisor_in_a_job_leaves_running_jobs_when_the_schedd_goes_away(tmp_path):
    ad = tmp_path / ".job.ad"
    ad.write_text("ClusterId = 39\nProcId = 0\n")
    child = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cog_pipeline.htcondor",
            "supervise",
            "--run-id",
            RUN_ID,
            "--",
            sys.executable,
            "-c",
            child,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(_CONDOR_JOB_AD=str(ad)),
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "leaving the run's running jobs to finish" in err and "Traceback" not in err


def test_a_signal_while_the_driver_starts_reaches_the_driver(tmp_path, monkeypatch):
    """SIGTERM right after the driver was spawned (a schedd shutting down then): the supervisor, whose handlers are
    in place before the spawn, forwards it to the driver instead of dying and orphaning it (seen as a 60 s hang of
    the test below in CI). Run in a forked child: without the fix that child dies of the signal."""
    import signal as signals

    from cog_pipeline.htcondor import supervisor

    real_popen = subprocess.Popen

    def popen_then_signalled(*args, **kwargs):
        started = real_popen(*args, **kwargs)
        os.kill(os.getpid(), signals.SIGTERM)
        return started

    monkeypatch.setattr(supervisor.subprocess, "Popen", popen_then_signalled)
    monkeypatch.delenv("_CONDOR_JOB_AD", raising=False)
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    driver = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\ntime.sleep(30)\n"
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            code = supervisor.supervise(RUN_ID, [sys.executable, "-c", driver])
        finally:
            os._exit(code)
    from faults.harness import reap

    assert reap(pid, 60, "the supervisor") == 143, "the driver got the SIGTERM and ended with 143"


def test_supervisor_messages_survive_a_restarted_driver(tmp_path):
    """HTCondor truncates driver_<cluster>.err when the driver job is re-run (seen after a schedd
    restart on a pool): the supervisor also appends its messages to logs/supervisor.log."""
    (tmp_path / "logs").mkdir()
    ad = tmp_path / ".job.ad"
    ad.write_text("ClusterId = 39\nProcId = 0\n")
    child = (
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    for _start in range(2):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cog_pipeline.htcondor",
                "supervise",
                "--run-id",
                RUN_ID,
                "--",
                sys.executable,
                "-c",
                child,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=clean_env(_CONDOR_JOB_AD=str(ad)),
        )
        assert proc.stdout.readline().strip() == "ready"
        proc.terminate()
        proc.communicate(timeout=60)
    text = (tmp_path / "logs" / h.SUPERVISOR_LOG).read_text()
    assert text.count("leaving the run's running jobs to finish") == 2
