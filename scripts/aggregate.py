"""Snakemake script for rule aggregate: a thin call into cog_pipeline.work.aggregate (outcome CSVs, report,
per-image logs, processing file deleted, manifest marked finished: the same as a tick's final step)."""

from cog_pipeline.work.aggregate import aggregate_manifest
from cog_pipeline.core.logs import log_to_file

with log_to_file(snakemake.log[0]):
    aggregate_manifest(snakemake.config, ".", snakemake.wildcards.manifest)
