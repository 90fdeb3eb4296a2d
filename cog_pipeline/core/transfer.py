"""How batch jobs reach S3 (``s3.transfer``): ``presigned`` (URLs signed on the access point, no key on execute
points) or ``direct`` (a boto3 client with the run's key files). ``auto`` (or absent) is ``presigned`` for the
htcondor executor and ``direct`` for local runs (docs/htcondor.md, "No key on execute points")."""

from __future__ import annotations

from typing import Any

from cog_pipeline.core.errors import PipelineError

TRANSFER_MODES = ("auto", "presigned", "direct")
PRESIGNED = "presigned"
DIRECT = "direct"
#: What the workflow says at its start (logs/snakemake.log), per mode.
ANNOUNCEMENTS = {
    PRESIGNED: "execute points get presigned URLs, no keys (s3.transfer: presigned)",
    DIRECT: "batch jobs reach S3 with the run's key files (s3.transfer: direct)",
}


def transfer_mode(config: dict[str, Any], executor: str | None = None) -> str:
    """``presigned`` or ``direct`` for this run config (``auto``: presigned on htcondor, direct locally);
    ``executor`` overrides the config's own."""
    value = (config.get("s3") or {}).get("transfer") or "auto"
    if value not in TRANSFER_MODES:
        raise PipelineError(f"s3.transfer must be one of {', '.join(TRANSFER_MODES)}, not {value!r}")
    if value != "auto":
        return str(value)
    return PRESIGNED if (executor or config.get("executor") or "local") == "htcondor" else DIRECT
