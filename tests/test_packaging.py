"""The installable product: a built wheel (not an editable install) carries the workflow and runs the demo;
the demo server is an optional extra; environment.yml mirrors pyproject.toml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")

#: What a source copy for the build leaves out (caches, environments, outputs, other engineers' builds).
_NOT_BUILT = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".snakemake",
    "demo-output",
    "workflow-run-*",
    "tests",
    "bench",
)


def workflow_files() -> list[str]:
    """Every file a run needs of the repository's top level, as paths inside the wheel."""
    rel = [
        "Snakefile",
        "environment.yml",
        "config/config.yaml",
        "config/config.schema.yaml",
        "profiles/htcondor/config.yaml",
        "profiles/htcondor/cog-pipeline.yaml",
        "profiles/htcondor/job-wrapper.sh",
    ]
    rel += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "rules").glob("*.smk"))]
    rel += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "scripts").glob("*.py"))]
    assert any(r.startswith("rules/") for r in rel) and any(r.startswith("scripts/") for r in rel)
    return [f"cog_pipeline/workflow/{r}" for r in rel]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the source tree, and the directory it is installed into (--target)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_BUILT)
    pip = [sys.executable, "-m", "pip", "--quiet"]
    # Verbose: the build backend's own warnings (setuptools deprecations) only show with -v.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "-v", "wheel", "--no-deps", str(src), "-w", str(tmp / "dist")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp / "build.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    (wheel,) = (tmp / "dist").glob("cog_pipeline-*.whl")
    site = tmp / "site"
    proc = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, wheel, site


def run_installed(tmp: Path, site: Path, code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Python code run with the installed wheel first on sys.path, from outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_wheel_carries_the_workflow(installed):
    _tmp, wheel, _site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in workflow_files() if f not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert "cog_pipeline/samples/byte.tif" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "bench/", "rules/", "scripts/"))]


#: What setuptools prints for a deprecated ``license = { text = ... }`` table (or other deprecated settings).
DEPRECATION = re.compile(
    r"SetuptoolsDeprecationWarning|BuildBackendWarning|deprecated|License classifiers|"
    r"2027-Feb-18",
    re.IGNORECASE,
)


@pytest.mark.slow
def test_wheel_build_shows_no_deprecation_warning(installed):
    """An SPDX ``license`` and ``license-files`` (setuptools >= 77): no warning that builds stop in 2027."""
    tmp, wheel, _site = installed
    warned = [
        line.strip()
        for line in (tmp / "build.log").read_text(encoding="utf-8").splitlines()
        if DEPRECATION.search(line)
    ]
    assert not warned, warned
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode("utf-8")
    assert "License-Expression: MIT" in text.splitlines(), text[:2000]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def test_pyproject_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "MIT"
    assert all((ROOT / f).is_file() for f in data["project"]["license-files"])
    (setuptools,) = [r for r in data["build-system"]["requires"] if _name(r) == "setuptools"]
    floor = re.search(r">=\s*(\d+)", setuptools)
    assert floor and int(floor.group(1)) >= 77, f"{setuptools}: SPDX license expressions need setuptools >= 77"


PATHS = """
import json, cog_pipeline
from cog_pipeline.control import driver
from cog_pipeline.htcondor import settings, staging
print(json.dumps({"package": cog_pipeline.__file__, "workflow": str(cog_pipeline.WORKFLOW_DIR),
                  "snakefile": str(driver.SNAKEFILE), "profile": str(settings.PROFILE_DIR),
                  "jobs": settings.read_yaml(settings.PROFILE_CONFIG, "profile").get("jobs"),
                  "resources": settings.profile_default_resources(),
                  "stage": str(staging.stage_workflow(__import__("pathlib").Path("run")))}))
"""


@pytest.mark.slow
def test_installed_package_finds_its_packaged_workflow_and_profile(installed):
    tmp, _wheel, site = installed
    proc = run_installed(tmp, site, PATHS)
    assert proc.returncode == 0, proc.stderr
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    packaged = site / "cog_pipeline" / "workflow"
    assert Path(paths["package"]).parent == site / "cog_pipeline"  # not the checkout
    assert Path(paths["workflow"]) == packaged
    assert Path(paths["snakefile"]) == packaged / "Snakefile"
    assert Path(paths["profile"]) == packaged / "profiles" / "htcondor"
    assert (packaged / "profiles" / "htcondor" / "config.yaml").is_file() and paths["jobs"]

    # The pool's run directory: its own copy of the packaged workflow, holding what the profile transfers.
    run = tmp / "run"
    stage = Path(paths["stage"])
    assert stage == run / "workflow"
    for rel in (
        "Snakefile",
        "environment.yml",
        "rules/common.smk",
        "scripts/convert_batch.py",
        "config/config.yaml",
        "config/config.schema.yaml",
        "cog_pipeline/__init__.py",
    ):
        assert (stage / rel).is_file(), rel
    assert os.access(stage / "job-wrapper.sh", os.X_OK)
    assert not (stage / "cog_pipeline" / "workflow").exists()  # the wheel's copy is not staged twice
    assert not (stage / "cog_pipeline" / "samples").exists()
    transfers = [f.strip() for f in paths["resources"]["htcondor_transfer_input_files"].split(",") if f.strip()]
    missing = [f for f in transfers if not (run / f).exists() and not f.endswith("job.env")]  # job.env: per run
    assert not missing, f"profile transfers missing from the stage: {missing}"


DEMO = """
import sys, cog_pipeline
from cog_pipeline.ui import cli
from cog_pipeline.control import driver
print("COG_PIPELINE_FROM", cog_pipeline.__file__)
print("SNAKEFILE", driver.SNAKEFILE)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_installed_wheel_runs_the_demo(installed):
    tmp, _wheel, site = installed
    workdir = tmp / "demo"
    proc = run_installed(tmp, site, DEMO, "demo", "--workdir", str(workdir), "--cores", "2", timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"COG_PIPELINE_FROM {site / 'cog_pipeline' / '__init__.py'}" in out
    assert f"SNAKEFILE {site / 'cog_pipeline' / 'workflow' / 'Snakefile'}" in out
    assert "Demo succeeded" in out
    output = workdir / "results" / "output"
    cogs = sorted(output.rglob("*.tif"))
    valid = [line for line in out.splitlines() if line.strip().startswith("valid COG ")]
    assert len(cogs) >= 6 and len(valid) == len(cogs), out
    assert all(c.with_suffix(".jpg").is_file() for c in cogs)
    # The interpreter is the checkout's venv (the demo names its cog-pipeline script); nothing else of it.
    assert str(ROOT) not in out.replace(str(tmp), "").replace(str(Path(sys.executable).parent), "")


def test_demo_without_moto_is_one_clear_line(tmp_path):
    """moto is the optional extra `demo`: without it `cog-pipeline demo` says how to install it."""
    code = "import sys; sys.modules['moto'] = None\nfrom cog_pipeline.ui import cli\nsys.exit(cli.main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "demo", "--workdir", str(tmp_path / "demo")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'cog-pipeline[demo]'" in lines[0], lines


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


#: conda-forge names of pyproject requirements that differ; what moto[server] is on conda-forge.
CONDA_NAMES = {"snakemake": "snakemake-minimal"}
CONDA_EXTRA = {"moto": {"flask", "flask-cors"}}


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {}
    extras = [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in project["dependencies"] + extras:
        name = _name(requirement)
        wanted[CONDA_NAMES.get(name, name)] = re.sub(r"^[^<>=!~]*", "", requirement.split(";")[0]).replace(" ", "")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have = {}
    for dep in env["dependencies"]:
        for entry in dep["pip"] if isinstance(dep, dict) else [dep]:
            if entry.startswith("-e"):
                continue
            entry = entry.split("#")[0].strip()
            have[_name(entry)] = re.sub(r"^[^<>=!~]*", "", entry).replace(" ", "")
    extra = {conda for name in wanted for conda in CONDA_EXTRA.get(name, ())}
    hint = "keep environment.yml's dependencies in step with pyproject.toml's (dependencies and extras)"
    assert {n: have.get(n) for n in wanted} == wanted, hint
    assert set(have) - set(wanted) - extra == {"python", "pip"}, hint


#: [project] dependencies that no module of the package or its workflow imports by name, and why each is declared.
NOT_IMPORTED = {
    "snakemake-executor-plugin-htcondor": "Snakemake loads it for --executor htcondor",
    "certifi": "the public CA bundle botocore falls back to without --ca-bundle, at a version with current roots",
}


def _imported_modules() -> set[str]:
    """Top-level modules the package, its workflow scripts, the Snakefile and its rules import (any depth)."""
    from test_layers import module_imports

    modules = set()
    for path in [*(ROOT / "cog_pipeline").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        modules.update(name.partition(".")[0] for _line, name in module_imports(path))
    for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        modules.update(re.findall(r"^\s*(?:from|import)\s+(\w+)", path.read_text(encoding="utf-8"), re.M))
    return modules - set(sys.stdlib_module_names) - {"cog_pipeline"}


def _requires_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require (installed metadata; requirements of extras left out)."""
    from importlib import metadata

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r.partition(";")[2]]
    return seen


def test_runtime_dependencies_are_what_runtime_imports():
    """Each [project] dependency is imported at runtime (or is in NOT_IMPORTED, with its reason), and each
    third-party module imported at runtime comes with a declared dependency or the extra `demo`. pandas was
    declared and never imported: only installed, it cost every Snakemake process about 0.5 CPU-seconds (a tick's,
    and one per job on a pool), because Snakemake imports it when present to store each script job's params."""
    from importlib import metadata

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    demo = {_name(r) for r in project["optional-dependencies"]["demo"]}
    by_module = metadata.packages_distributions()
    imported = {
        module: {_name(d) for d in by_module.get(module, [module])} for module in _imported_modules()
    }  # a module name -> the distributions that provide it
    never_imported = declared - set(NOT_IMPORTED) - {d for dists in imported.values() for d in dists}
    assert not never_imported, f"declared in pyproject.toml but imported nowhere at runtime: {sorted(never_imported)}"
    assert set(NOT_IMPORTED) <= declared
    provided = _requires_closure(declared | demo)
    undeclared = {m: sorted(d) for m, d in imported.items() if not d & provided}
    assert not undeclared, f"imported at runtime but not a dependency (nor required by one): {undeclared}"
