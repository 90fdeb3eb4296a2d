"""What a tick is asked to do (``TickOptions``, mirroring the command-line flags) and its timing defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.storage import s3
from cog_pipeline.storage.endpoint import PROBE_EVERY

#: A claim marker older than this is stale whoever wrote it; a claim is abandoned past half of it.
CLAIM_LEASE = 3600.0
#: A processing object claimed elsewhere is adopted after this long without a heartbeat.
ADOPT_AFTER = 6 * 3600.0
#: Live runs refresh their processing objects when older than this.
HEARTBEAT = 1800.0


@dataclass(frozen=True)
class TickOptions:
    """Everything a tick needs; mirrors the command-line flags."""

    input_bucket: str
    output_bucket: str
    settings: s3.S3Settings = field(default_factory=s3.S3Settings)
    pattern: str = "*raw.csv"
    executor: str = "local"
    cores: int = 2
    dry_run: bool = False
    workdir: Path = field(default_factory=Path.cwd)
    #: A site config file (``--config FILE``) over the workflow's defaults.
    config_file: Path | None = None
    #: Config values written into run.yaml (they win over the site file), e.g. batch_size, tmp_dir.
    run_overrides: dict[str, Any] = field(default_factory=dict)
    claim_lease: float = CLAIM_LEASE
    adopt_after: float = ADOPT_AFTER
    heartbeat: float = HEARTBEAT
    #: Probe answers of the endpoint cached in the working directory are re-used for this long.
    probe_every: float = PROBE_EVERY
