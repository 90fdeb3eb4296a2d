"""Why a row failed, as a stable name: the failure code written into each image's status record.

Codes are given where a failure is raised or recorded (the converter, the batch, the aggregate, the
manifest parser), never guessed from the reason's wording; the operator's advice is keyed by them
(work/imagelogs.py). The values are written to files: never rename one, only add.
"""

from __future__ import annotations

from enum import Enum


class FailureCode(str, Enum):
    """What kind of failure a failed row had (its value is what status records and summaries hold)."""

    INPUT_MISSING = "input-missing"
    INPUT_EMPTY = "input-empty"
    INPUT_CHANGED = "input-changed"
    NOT_A_TIFF = "not-a-tiff"
    CORRUPT = "corrupt"
    TOO_LARGE = "too-large"
    DISK_FULL = "disk-full"
    JPEG_TOO_LARGE = "jpeg-too-large"
    GDAL_FAILED = "gdal-failed"
    VERIFY_FAILED = "verify-failed"
    S3_DENIED = "s3-denied"
    S3_FAILED = "s3-failed"
    INTERNAL = "internal"
    BATCH_DID_NOT_FINISH = "batch-did-not-finish"
    BATCH_REMOVED = "batch-removed"
    BATCH_HELD = "batch-held"
    OUTPUT_MISSING = "output-missing"
    MANIFEST_ROW = "manifest-row"
    URLS_EXPIRED = "urls-expired"
    QA_FAILED = "qa-failed"

    def __str__(self) -> str:
        return self.value
