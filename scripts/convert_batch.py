"""Snakemake script for rule convert_batch: a thin call into cog_pipeline.work.batch (with the batch's
presigned URLs as input when s3.transfer is presigned: then no S3 key is read here)."""

from cog_pipeline.work.batch import run_batch
from cog_pipeline.core.logs import log_to_file

presigned = hasattr(snakemake.input, "urls")
with log_to_file(snakemake.log[0]):
    run_batch(
        snakemake.config,
        ".",
        snakemake.wildcards.manifest,
        int(snakemake.wildcards.batch),
        snakemake.output.records,
        threads=snakemake.threads,
        urls_file=snakemake.input.urls if presigned else None,
    )
