# cog-pipeline workflow: every row of the claimed manifests becomes a COG + JPEG in the output bucket,
# then each manifest's outcome CSVs replace its processing file. Run inside a workflow-run-<TS>/
# directory (made by `cog-pipeline tick`), which holds run.yaml and the claimed manifests.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


if os.path.exists("run.yaml"):

    configfile: "run.yaml"


include: "rules/common.smk"
include: "rules/qa.smk"
include: "rules/convert.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        expand("outcome/{manifest}.json", manifest=MANIFEST_IDS),
    default_target: True
