# Helpers and config validation shared by every rule.
from cog_pipeline.core import config as config_model
from cog_pipeline.core.naming import batch_id
from cog_pipeline.htcondor import sizing
from cog_pipeline.core.rundir import RunConfig
from cog_pipeline.work.manifest import batch_slices, read_manifest


# The one loader's checks (the schema, then the conversion options' own), as the tick ran them: a bad value
# is one line naming the key and the rule; names GDAL takes in any case are normalised (lzw = LZW).
config.update(config_model.validate(config, "run config (config/config.yaml <- run.yaml)"))
RUN = RunConfig(config)
MANIFESTS = {m.id: m for m in RUN.manifests}
MANIFEST_IDS = list(MANIFESTS)


wildcard_constraints:
    manifest=r"m\d+",
    batch=r"\d{5}",


def manifest_csv(wildcards):
    """The claimed manifest CSV of a manifest id (relative to the run directory)."""
    return MANIFESTS[wildcards.manifest].csv


def batch_ids(manifest_id):
    """Ids of the batches a manifest's accepted rows are cut into (config batch_size)."""
    entries = read_manifest(MANIFESTS[manifest_id].csv).entries
    return [batch_id(i) for i in range(len(batch_slices(len(entries), RUN.batch_size)))]


def batch_status_files(wildcards):
    """Every batch status file of one manifest: the aggregate's inputs."""
    return [
        f"status/{wildcards.manifest}/batch-{b}.jsonl"
        for b in batch_ids(wildcards.manifest)
    ]


# Job sizes on a pool (cog_pipeline/htcondor/sizing.py): memory and disk from the batch's largest input,
# cpus from GDAL's thread count. The input sizes are listed once per manifest by the driver (never on an
# execute point, where the Snakefile is parsed again: there the value only has to fit the --resources the
# job was given, which it does).
_BATCH_SIZES = {}


def _manifest_sizes(manifest_id):
    """{key: bytes} of a manifest's inputs (manifests/sizes-<m>.json, listed once), or None."""
    if manifest_id not in _BATCH_SIZES:
        listed = sizing.read_sizes(".", manifest_id)
        if listed is None and workflow.is_main_process and RUN.executor == "htcondor":
            listed = _list_sizes(manifest_id)
        _BATCH_SIZES[manifest_id] = listed
    return _BATCH_SIZES[manifest_id]


def _list_sizes(manifest_id):
    """List the input bucket under the manifest's keys' common prefix and record their sizes."""
    from snakemake.logging import logger
    from cog_pipeline.storage import s3

    keys = [e.key for e in read_manifest(MANIFESTS[manifest_id].csv).entries]
    try:
        client = s3.make_client(s3.S3Settings.from_config(config["s3"]))
        listed = sizing.sizes_under(keys, (
            (o["Key"], o["Size"])
            for o in s3.iter_objects(client, config["s3"]["input_bucket"], os.path.commonprefix(keys))))
    except Exception as exc:  # a listing that fails only costs the sizing: the caps are asked for
        logger.warning(f"manifest {manifest_id}: input sizes not listed ({s3.describe_error(exc)}); batch jobs "
                       f"ask for mem_mb_per_job / disk_mb_per_job")
        return None
    sizing.write_sizes(".", manifest_id, listed)
    return listed


def batch_request(wildcards, attempt=1):
    """The batch's sizing.Request (the caps when no sizes are known)."""
    from snakemake.logging import logger

    entries = read_manifest(MANIFESTS[wildcards.manifest].csv).entries
    start, stop = batch_slices(len(entries), RUN.batch_size)[int(wildcards.batch)]
    sizes = sizing.batch_sizes([e.key for e in entries[start:stop]], _manifest_sizes(wildcards.manifest))
    if sizes is None:
        return sizing.Request(config["mem_mb_per_job"], config["disk_mb_per_job"], 0, stop - start)
    request = sizing.batch_request(sizes, mem_cap_mb=config["mem_mb_per_job"],
                                   disk_cap_mb=config["disk_mb_per_job"], attempt=attempt)
    if request.capped and workflow.is_main_process:
        logger.warning(f"batch {wildcards.manifest}/{wildcards.batch}: the sizing model wants more than "
                       f"{' and '.join(request.capped)} for its largest input "
                       f"({request.largest_input_bytes} bytes); asking for the cap (raise it in the config)")
    return request


def batch_threads():
    """Threads (HTCondor request_cpus) of a batch job: GDAL's thread count on a pool, never ALL_CPUS there."""
    if RUN.executor != "htcondor":
        return config["threads_per_job"]
    threads = sizing.threads_for_pool(config["cog"]["num_threads"], config["threads_per_job"])
    if workflow.is_main_process and str(config["cog"]["num_threads"]).strip().upper() == "ALL_CPUS":
        from snakemake.logging import logger

        logger.info(f"cog.num_threads is ALL_CPUS: batch jobs on the pool use threads_per_job ({threads}) for "
                    "GDAL and request_cpus (under cgroups GDAL's ALL_CPUS counts the whole machine, OSGeo/gdal#6669)")
    return threads


# How batch jobs reach S3 (s3.transfer, cog_pipeline/work/presigned.py; docs/htcondor.md "No key on execute
# points"): direct (the job's own boto3 client and the run's key files) or presigned (the access point signs
# each image's GET and PUTs in presign_batch, the job holds URLs and no key, confirm_batch checks the uploads
# and writes the status file). auto: presigned on htcondor, direct locally.
# (core modules only: the workflow's own process needs neither boto3 nor rasterio)
from cog_pipeline.core import transfer

TRANSFER = transfer.transfer_mode(config, RUN.executor)
PRESIGNED = TRANSFER == transfer.PRESIGNED
# What convert_batch writes: the status file (direct), or the job's records for confirm_batch (presigned).
CONVERT_OUTPUT = "uploads/{manifest}/batch-{batch}.jsonl" if PRESIGNED else "status/{manifest}/batch-{batch}.jsonl"

if workflow.is_main_process:
    from snakemake.logging import logger

    logger.info(transfer.ANNOUNCEMENTS[TRANSFER])


# Delivery QA (rules/qa.smk, cog_pipeline/work/qa_step.py): a manifest's batches wait for its verdict and leave
# out the rows it fails (qa.enabled: false, no QA step).
from cog_pipeline.core.naming import qa_verdict_path

QA_ENABLED = config_model.qa_enabled(config)


def qa_verdict(wildcards):
    """The manifest's QA verdict (qa/<m>.json), or nothing when QA is off."""
    return [str(qa_verdict_path("", wildcards.manifest))] if QA_ENABLED else []


def convert_inputs(wildcards):
    """The manifest, the QA verdict (qa.enabled), and with presigned transfers the batch's URL file."""
    inputs = {"manifest": manifest_csv(wildcards)}
    if QA_ENABLED:
        inputs["qa"] = str(qa_verdict_path("", wildcards.manifest))
    if PRESIGNED:
        inputs["urls"] = f"urls/{wildcards.manifest}/batch-{wildcards.batch}.json"
    return inputs
