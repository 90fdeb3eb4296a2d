"""cog-pipeline: GeoTIFFs in S3 -> Cloud Optimized GeoTIFFs + JPEG previews, via Snakemake (and HTCondor)."""

from pathlib import Path

__version__ = "0.1.0"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _workflow_dir() -> Path:
    """The checkout's top level when the package runs from one (an editable install, or a run's
    ``workflow/`` copy, where the Snakefile sits next to the package); else the copy an installed
    wheel carries in ``cog_pipeline/workflow/`` (see setup.py)."""
    checkout = _PACKAGE_DIR.parent
    if (checkout / "Snakefile").is_file() and (checkout / "rules").is_dir():
        return checkout
    return _PACKAGE_DIR / "workflow"


#: The directory holding Snakefile, rules/, scripts/, config/, profiles/ and environment.yml.
WORKFLOW_DIR = _workflow_dir()
SAMPLES_DIR = _PACKAGE_DIR / "samples"
