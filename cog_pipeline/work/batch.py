"""Per-image work for one batch of manifest rows: fetch, convert, verify, upload, record the outcome.

A bad image never fails the batch: every row gets a JSON record (``ok``, ``skipped`` or ``failed``
with the step and reason), so the aggregate always runs. A row whose outputs are already in the
output bucket, converted from the same input object (ETag kept in the COG's metadata), is skipped.

S3 requests per image: one HeadObject of the input (existence, size, ETag), its GET(s), the two
PUTs and a HeadObject after each (the stored object is confirmed: size, ETag); the skip-if-done check
lists the batch's output keys once (one ListObjectsV2 per batch) and sends a HeadObject only for a COG
that is already there (to read the source ETag it was made from).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import botocore.exceptions

from cog_pipeline import __version__
from cog_pipeline.storage import s3
from cog_pipeline.core.crash import crash_point
from cog_pipeline.raster.convert import ConversionResult, convert_file, cog_options_from_config, jpeg_options_from_config
from cog_pipeline.core.errors import ImageError, PipelineError
from cog_pipeline.work.manifest import Entry, batch_slices, jpeg_key, parse_manifest
from cog_pipeline.work.imagelogs import capture as capture_image_log
from cog_pipeline.work.report import MAX_THUMBNAIL_LINE
from cog_pipeline.raster.thumbnail import thumbnail_data_uri

log = logging.getLogger(__name__)

SOURCE_ETAG_META = "cog-pipeline-source-etag"
#: A random token per upload: tells an upload that landed from one that did not when its answer was lost.
UPLOAD_META = "cog-pipeline-upload"


def manifest_entries(run_dir: Path, manifest: dict[str, Any]) -> list[Entry]:
    """Accepted rows of a claimed manifest, in file order."""
    return parse_manifest((Path(run_dir) / manifest["csv"]).read_bytes()).entries


def batch_entries(config: dict[str, Any], run_dir: Path, manifest_id: str, index: int) -> list[Entry]:
    """The rows batch ``index`` of manifest ``manifest_id`` owns (deterministic slicing)."""
    manifest = manifest_config(config, manifest_id)
    entries = manifest_entries(run_dir, manifest)
    slices = batch_slices(len(entries), int(config["batch_size"]))
    if index >= len(slices):
        return []
    start, stop = slices[index]
    return entries[start:stop]


def manifest_config(config: dict[str, Any], manifest_id: str) -> dict[str, Any]:
    """The ``manifests:`` entry with this id."""
    for manifest in config.get("manifests", []):
        if manifest["id"] == manifest_id:
            return manifest
    raise KeyError(f"manifest id {manifest_id!r} not in the run config")


class ImageContext:
    """What processing an image needs: the S3 client, settings and conversion options."""

    def __init__(self, config: dict[str, Any], threads: int | None = None):
        self.config = config
        self.settings = s3.S3Settings.from_config(config["s3"])
        self.client = s3.make_client(self.settings)
        self.input_bucket = config["s3"]["input_bucket"]
        self.output_bucket = config["s3"]["output_bucket"]
        cog_cfg = dict(config.get("cog", {}))
        if threads:
            cog_cfg["num_threads"] = str(threads)
        self.cog_options = cog_options_from_config(cog_cfg)
        self.jpeg_options = jpeg_options_from_config(config.get("jpeg", {}))
        self.tmp_root = config.get("tmp_dir") or None
        #: Output keys found by the batch's one listing (None: not listed, ask per image).
        self.listed_outputs: set[str] | None = None

    def list_outputs(self, entries: list[Entry]) -> None:
        """List the batch's output keys once, so that images whose COG is absent need no HeadObject."""
        try:
            self.listed_outputs = s3.existing_keys(
                self.client, self.output_bucket, [k for e in entries for k in (e.key, jpeg_key(e.key))])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, PipelineError) as exc:
            log.info("cannot list the batch's outputs (%s); checking each image's instead", s3.describe_error(exc))
            self.listed_outputs = None


def _s3_step(step: str, exc: BaseException) -> ImageError:
    return ImageError(step, s3.describe_error(exc))


def already_done(ctx: ImageContext, entry: Entry, source_etag: str) -> bool:
    """True when both outputs exist and the COG was made from this very input object.

    With the batch's listing, a COG or JPEG not listed means "not done" without a request; a listed
    COG is still read (HeadObject) for its source ETag. Outputs that appeared since the listing are
    converted again (as a concurrent run would), which loses nothing.
    """
    listed = ctx.listed_outputs
    if listed is not None and (entry.key not in listed or jpeg_key(entry.key) not in listed):
        return False
    cog_head = s3.head(ctx.client, ctx.output_bucket, entry.key)
    if cog_head is None or cog_head.get("Metadata", {}).get(SOURCE_ETAG_META) != source_etag:
        return False
    if listed is not None:
        return True
    return s3.head(ctx.client, ctx.output_bucket, jpeg_key(entry.key)) is not None


def process_image(ctx: ImageContext, entry: Entry) -> dict[str, Any]:
    """Convert one manifest row end to end; returns its outcome record (never raises for image faults)."""
    record: dict[str, Any] = {"key": entry.key, "line": entry.line, "bands": entry.bands_text}
    started = time.monotonic()
    with capture_image_log(record):  # this image's log lines -> record["log"] (logs/images/ at the end)
        try:
            record.update(_process(ctx, entry))
        except ImageError as exc:
            record.update(status="failed", step=exc.step, reason=exc.message)
        except Exception as exc:  # noqa: BLE001 - one image must never take the batch down
            log.exception("unexpected error on %s", entry.key)
            record.update(status="failed", step="internal", reason=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def _process(ctx: ImageContext, entry: Entry) -> dict[str, Any]:
    try:
        source = s3.head(ctx.client, ctx.input_bucket, entry.key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _s3_step("download", exc) from None
    if source is None:
        raise ImageError("download", f"input object not found in bucket '{ctx.input_bucket}'; "
                                     "upload it, then retry the failed rows")
    if source.get("ContentLength", 0) == 0:
        raise ImageError("download", "input object is empty (0 bytes)")
    etag = source["ETag"]
    try:
        if already_done(ctx, entry, etag):
            return {"status": "skipped", "reason": "outputs already made from this input", "input_bytes": source["ContentLength"]}
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _s3_step("check-output", exc) from None

    workdir = _private_tmpdir(ctx.tmp_root)
    try:
        local_in, local_cog, local_jpg = workdir / "input.tif", workdir / "cog.tif", workdir / "preview.jpg"
        try:
            s3.download_file(ctx.client, ctx.input_bucket, entry.key, local_in, ctx.settings,
                             size=source["ContentLength"], etag=etag)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if s3.is_precondition_failed(exc):
                raise ImageError("download", "input object was replaced while it was being downloaded; "
                                             "retry the failed rows") from None
            raise _s3_step("download", exc) from None
        except OSError as exc:
            raise ImageError("download", _os_reason(exc, workdir)) from None
        crash_point("batch.downloaded")
        try:
            result = convert_file(local_in, local_cog, local_jpg, ctx.cog_options, ctx.jpeg_options,
                                  expected_bands=entry.bands)
        except OSError as exc:
            raise ImageError("cog", _os_reason(exc, workdir)) from None
        except ImageError as exc:
            raise _space_hint(exc, workdir, source["ContentLength"]) from None
        crash_point("batch.converted")
        metadata = {SOURCE_ETAG_META: etag, "cog-pipeline-version": __version__}
        try:
            # JPEG first: the COG (with the source ETag) is the "done" marker checked by reruns. Each is
            # confirmed once stored; a JPEG that is not is removed (and no COG sent), a COG that is not is
            # removed (the JPEG before it, confirmed, stays).
            _upload(ctx, jpeg_key(entry.key), local_jpg, "image/jpeg", metadata)
            crash_point("batch.uploaded-jpeg")
            _upload(ctx, entry.key, local_cog, "image/tiff; application=geotiff; profile=cloud-optimized", metadata)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                s3.boto3.exceptions.S3UploadFailedError) as exc:
            raise _s3_step("upload", exc) from None
        crash_point("batch.uploaded")
        fields = _result_fields(result, source["ContentLength"])
        if entry.line <= MAX_THUMBNAIL_LINE:
            try:
                fields["thumbnail"] = thumbnail_data_uri(local_cog, options=ctx.jpeg_options)  # from its overviews
            except Exception as exc:  # noqa: BLE001 - a missing thumbnail never fails an image
                log.warning("%s: no thumbnail for the report: %s", entry.key, exc)
        return fields
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _upload(ctx: ImageContext, key: str, path: Path, content_type: str, metadata: dict[str, str]) -> None:
    """Upload one output and confirm the stored object (size, ETag: ``s3.verify_upload``) with one
    HeadObject; an object that is not the file (a short one, chunk framing stored inside it) is removed
    and the image fails at ``upload`` with what was expected and found.

    When boto3 gives up but the object did land (a lost answer to the last PUT or CompleteMultipartUpload,
    after retries), it is recognised by its upload token (same HeadObject) and verified instead of failing.
    """
    token = secrets.token_hex(8)
    try:
        s3.upload_file(ctx.client, ctx.output_bucket, key, path, ctx.settings, content_type,
                       {**metadata, UPLOAD_META: token})
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
            s3.boto3.exceptions.S3UploadFailedError) as exc:
        try:
            landed = s3.head(ctx.client, ctx.output_bucket, key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            landed = None
        if landed is None or landed.get("Metadata", {}).get(UPLOAD_META) != token:
            raise
        _verify(ctx, key, path, token, landed)
        log.info("%s: the upload reported %s, but the object is there, complete", key, s3.describe_error(exc))
        return
    try:
        landed = s3.head(ctx.client, ctx.output_bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        # Unconfirmed: not left behind as if done (a rerun would skip a COG carrying the source ETag).
        raise ImageError("upload", f"cannot confirm the stored object {key} ({s3.describe_error(exc)})"
                                   f"{_remove(ctx, key)}") from None
    if landed is None:
        raise ImageError("upload", f"no object at {key} after its upload reported success")
    _verify(ctx, key, path, token, landed)


def _verify(ctx: ImageContext, key: str, path: Path, token: str, landed: dict[str, Any]) -> None:
    """``s3.verify_upload`` on the HeadObject ``landed``; a mismatch removes this upload's object."""
    try:
        s3.verify_upload(ctx.client, ctx.output_bucket, key, path, ctx.settings, head=landed)
    except s3.UploadMismatch as exc:
        if landed.get("Metadata", {}).get(UPLOAD_META) != token:
            # Another upload replaced ours since: its writer confirms its own; not ours to remove.
            raise ImageError("upload", f"{exc.detail}; it was replaced by another upload (left in place)") from None
        raise ImageError("upload", f"{exc.detail}{_remove(ctx, key, landed)}") from None


def _remove(ctx: ImageContext, key: str, landed: dict[str, Any] | None = None) -> str:
    """Delete the object at ``key`` (on a versioned bucket exactly the version ``landed`` names, so no bad
    version stays behind a delete marker); says how that went (to append to a reason)."""
    version = s3.version_id(landed or {})
    try:
        ctx.client.delete_object(Bucket=ctx.output_bucket, Key=key, **({"VersionId": version} if version else {}))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.warning("%s: cannot remove the unconfirmed object: %s", key, s3.describe_error(exc))
        return f"; removing it failed ({s3.describe_error(exc)}): delete it by hand"
    return "; the object was removed"


def _result_fields(result: ConversionResult, input_bytes: int) -> dict[str, Any]:
    info = result.info
    return {
        "status": "ok",
        "file_bands": info.count,
        "dtype": info.dtype,
        "width": info.width,
        "height": info.height,
        "input_bytes": input_bytes,
        "cog_bytes": result.cog_bytes,
        "jpeg_bytes": result.jpeg_bytes,
        "notes": list(result.notes),
        "step_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }


def _private_tmpdir(root: str | None) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix="cog-pipeline-", dir=root))
    except OSError as exc:
        raise ImageError("download", f"cannot create a temp dir in {root or tempfile.gettempdir()}: "
                                     f"{exc.strerror}") from None


def _space_hint(exc: ImageError, where: Path, input_bytes: int) -> ImageError:
    """``exc``, naming the likely cause when the temp dir is out of space.

    GDAL's TIFF writer reports a full disk as e.g. 'TIFFRewriteDirectory: Error fetching directory
    count' (the ENOSPC itself is printed to stderr by its compression threads, never raised). After
    such a failure, a device with less room left than twice the input (the COG with its overviews,
    then the JPEG) is the likely cause.
    """
    if "no space left" in exc.message.lower():
        return exc
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return exc
    if free >= 2 * input_bytes:
        return exc
    mib = 1024 * 1024
    return ImageError(exc.step, f"{exc.message}; most likely no space left on the device holding {where.parent}: "
                                f"{free / mib:.0f} MiB free for an input of {input_bytes / mib:.0f} MiB "
                                "(set tmp_dir in the config to a larger disk)")


def _os_reason(exc: OSError, where: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where.parent} (set tmp_dir in the config)"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def run_batch(config: dict[str, Any], run_dir: Path, manifest_id: str, index: int,
              status_file: Path, threads: int | None = None) -> list[dict[str, Any]]:
    """Process batch ``index`` and write one JSON record per row to ``status_file`` (atomically).

    Records are appended to ``<status_file>.tmp`` as images finish (progress can be followed there);
    the file is renamed to ``status_file`` only once the whole batch is recorded.
    """
    entries = batch_entries(config, run_dir, manifest_id, index)
    ctx = ImageContext(config, threads)
    if entries:
        ctx.list_outputs(entries)
    records = []
    status_file = Path(status_file)
    status_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = status_file.with_name(status_file.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for entry in entries:
            record = process_image(ctx, entry)
            log.info("%s: %s%s (%.1f s)", entry.key, record["status"],
                     f" at {record['step']}: {record['reason']}" if record["status"] == "failed" else "",
                     record["seconds"])
            for note in record.get("notes", []):
                log.info("%s: note: %s", entry.key, note)
            records.append(record)
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, status_file)
    crash_point("batch.status")
    return records


def read_status_records(run_dir: Path, manifest_id: str) -> dict[str, dict[str, Any]]:
    """All per-image records written so far for a manifest, by key."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(run_dir) / "status" / manifest_id).glob("batch-*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    records[record["key"]] = record
    return records
