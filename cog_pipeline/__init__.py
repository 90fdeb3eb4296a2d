"""cog-pipeline: GeoTIFFs in S3 -> Cloud Optimized GeoTIFFs + JPEG previews, via Snakemake (and HTCondor)."""

from pathlib import Path

__version__ = "0.1.0"

#: The directory holding Snakefile, rules/, scripts/, config/ and profiles/ (the repository root).
WORKFLOW_DIR = Path(__file__).resolve().parent.parent
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
