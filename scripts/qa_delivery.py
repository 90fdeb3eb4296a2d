"""Snakemake script for the local rule qa_delivery: a thin call into cog_pipeline.work.qa_step (the delivery's
QA before any conversion; its verdict tells the batches which rows to leave out)."""

from cog_pipeline.core.logs import log_to_file
from cog_pipeline.work.qa_step import qa_manifest

with log_to_file(snakemake.log[0]):
    qa_manifest(snakemake.config, ".", snakemake.wildcards.manifest)
