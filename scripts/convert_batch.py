"""Snakemake script for rule convert_batch: a thin call into cog_pipeline.work.batch."""
from cog_pipeline.work.batch import run_batch
from cog_pipeline.core.logs import log_to_file

with log_to_file(snakemake.log[0]):
    run_batch(
        snakemake.config,
        ".",
        snakemake.wildcards.manifest,
        int(snakemake.wildcards.batch),
        snakemake.output.status,
        threads=snakemake.threads,
    )
