"""Build hook: ship the workflow as package data without moving it.

The repository keeps the workflow at its top level (Snakefile, rules/, scripts/, config/,
profiles/, environment.yml); a built wheel carries a copy of them in ``cog_pipeline/workflow/``,
which ``cog_pipeline.WORKFLOW_DIR`` finds when the package is not run from a checkout. Everything
else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: What a run needs of the repository's top level (keep in step with MANIFEST.in).
WORKFLOW_FILES = ("Snakefile", "environment.yml")
WORKFLOW_DIRS = ("rules", "scripts", "config", "profiles")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")


class build_py_with_workflow(build_py):
    """build_py, then copy the workflow into ``<build_lib>/cog_pipeline/workflow/``."""

    def run(self) -> None:
        super().run()
        # An editable install runs from the checkout, where WORKFLOW_DIR is the repository itself.
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "cog_pipeline" / "workflow"
        shutil.rmtree(dest, ignore_errors=True)  # no stale files from an earlier build
        dest.mkdir(parents=True)
        for name in WORKFLOW_FILES:
            shutil.copy2(ROOT / name, dest / name)
        for name in WORKFLOW_DIRS:
            shutil.copytree(ROOT / name, dest / name, ignore=_IGNORE)


setup(cmdclass={"build_py": build_py_with_workflow})
