# Helpers and config validation shared by every rule.
import math

from snakemake.utils import validate

from cog_pipeline.work.batch import manifest_entries
from cog_pipeline.work.manifest import batch_slices
from cog_pipeline.core.naming import batch_id


validate(config, schema="../config/config.schema.yaml")

MANIFESTS = {m["id"]: m for m in config.get("manifests", [])}
MANIFEST_IDS = list(MANIFESTS)


wildcard_constraints:
    manifest=r"m\d+",
    batch=r"\d{5}",


def manifest_csv(wildcards):
    """The claimed manifest CSV of a manifest id (relative to the run directory)."""
    return MANIFESTS[wildcards.manifest]["csv"]


def batch_ids(manifest_id):
    """Ids of the batches a manifest's accepted rows are cut into (config batch_size)."""
    entries = manifest_entries(".", MANIFESTS[manifest_id])
    return [batch_id(i) for i in range(len(batch_slices(len(entries), config["batch_size"])))]


def batch_status_files(wildcards):
    """Every batch status file of one manifest: the aggregate's inputs."""
    return [
        f"status/{wildcards.manifest}/batch-{b}.jsonl"
        for b in batch_ids(wildcards.manifest)
    ]
