"""Snakemake script for the local rule confirm_batch: the access point confirms what the batch job uploaded
with presigned URLs and writes the batch's status file (cog_pipeline.work.signing)."""

from cog_pipeline.work.signing import confirm_batch
from cog_pipeline.core.logs import log_to_file

with log_to_file(snakemake.log[0]):
    confirm_batch(
        snakemake.config,
        ".",
        snakemake.wildcards.manifest,
        int(snakemake.wildcards.batch),
        snakemake.input.urls,
        snakemake.input.records,
        snakemake.output.status,
    )
