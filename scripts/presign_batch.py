"""Snakemake script for the local rule presign_batch: the batch's presigned URLs, signed on the access point
(cog_pipeline.work.signing; s3.transfer: presigned)."""

from cog_pipeline.work.signing import presign_batch
from cog_pipeline.core.logs import log_to_file

with log_to_file(snakemake.log[0]):
    presign_batch(
        snakemake.config, ".", snakemake.wildcards.manifest, int(snakemake.wildcards.batch), snakemake.output.urls
    )
