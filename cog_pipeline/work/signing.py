"""The access point's half of presigned transfers (s3.transfer: presigned): sign a batch before its job,
confirm what the job uploaded after it. Both run in the driver's Snakemake (local rules), with the run's keys.

:func:`presign_batch` decides each row there (the input's HeadObject, skip-if-done from one listing of the
batch's outputs, as a direct batch does) and signs a GET pinned to the listed ETag and the PUTs (COG, JPEG and
every file the ``jpeg:`` settings may put beside it, all with the source ETag and an upload token in signed
metadata). :func:`confirm_batch` checks each upload the job reports as ``s3.verify_upload`` does (HeadObject:
size and ETag against the file's MD5, and that the object carries this batch's token), removes a mismatched
object of ours and the files beside the JPEG of an image that failed, and writes the batch's status file.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from cog_pipeline import __version__
from cog_pipeline.core.errors import ImageError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.naming import batch_id
from cog_pipeline.raster.convert import preview_content_type, preview_key
from cog_pipeline.storage import endpoint, presign, s3
from cog_pipeline.work.batch import (
    SOURCE_ETAG_META,
    UPLOAD_META,
    ImageContext,
    _remove,
    _remove_stored,
    batch_entries,
    check_source,
    failure_code,
    sidecar_suffixes,
)
from cog_pipeline.work.manifest import Entry, jpeg_key
from cog_pipeline.work.outcomes import ImageOutcome, Status, write_outcomes
from cog_pipeline.work.presigned import Action, BatchUrls, ImageUrls, JobRecord, expiry_s, read_records

log = logging.getLogger(__name__)

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
JPEG_TYPE = "image/jpeg"


def _pin_gets(run_dir: Path, settings: s3.S3Settings, bucket: str) -> bool:
    """Sign GETs with If-Match unless the endpoint's cached probe (in the working directory) found it refused."""
    caps = endpoint.cached(Path(run_dir).resolve().parent, settings, bucket)
    return caps is None or caps.get_if_match != endpoint.REFUSED


def presign_batch(config: dict[str, Any], run_dir: Path, manifest_id: str, index: int, out: Path) -> BatchUrls:
    """Decide and sign every row of batch ``index``; the URLs go to ``out`` (mode 600)."""
    entries = batch_entries(config, run_dir, manifest_id, index)
    ctx = ImageContext(config)
    expires = expiry_s(config)
    signer = presign.signing_client(ctx.settings)
    pin = _pin_gets(run_dir, ctx.settings, ctx.input_bucket)
    if entries:
        ctx.list_outputs(entries)
    made = time.time()
    images = tuple(_sign(ctx, signer, entry, expires, pin) for entry in entries)
    urls = BatchUrls(manifest_id, batch_id(index), made, made + expires, images)
    urls.write(out)
    counts = {a: sum(i.action is a for i in images) for a in Action}
    log.info(
        "batch %s/%s: %d to convert, %d skipped (already done), %d failed here; URLs %s",
        manifest_id,
        urls.batch,
        counts[Action.CONVERT],
        counts[Action.SKIP],
        counts[Action.FAIL],
        urls.describe(),
    )
    return urls


def _sign(ctx: ImageContext, signer: Any, entry: Entry, expires: int, pin: bool) -> ImageUrls:
    try:
        source, done = check_source(ctx, entry)
    except ImageError as exc:
        log.info("%s: failed at %s: %s", entry.key, exc.step, exc.message)
        return ImageUrls(entry.key, entry.line, Action.FAIL, code=failure_code(exc), step=exc.step, reason=exc.message)
    size, etag = int(source["ContentLength"]), str(source["ETag"])
    if done:
        return ImageUrls(
            entry.key,
            entry.line,
            Action.SKIP,
            input_bytes=size,
            source_etag=etag,
            reason="outputs already made from this input",
        )
    token = secrets.token_hex(8)
    metadata = {SOURCE_ETAG_META: etag, "cog-pipeline-version": __version__, UPLOAD_META: token}
    jpeg = jpeg_key(entry.key)
    return ImageUrls(
        entry.key,
        entry.line,
        Action.CONVERT,
        input_bytes=size,
        source_etag=etag,
        token=token,
        get=presign.presign_get(signer, ctx.input_bucket, entry.key, expires, etag if pin else None),
        jpeg_put=presign.presign_put(signer, ctx.output_bucket, jpeg, expires, JPEG_TYPE, metadata),
        cog_put=presign.presign_put(signer, ctx.output_bucket, entry.key, expires, COG_TYPE, metadata),
        sidecar_puts=tuple(
            (
                suffix,
                presign.presign_put(
                    signer,
                    ctx.output_bucket,
                    preview_key(jpeg, suffix),
                    expires,
                    preview_content_type(suffix),
                    metadata,
                ),
            )
            for suffix in sidecar_suffixes(ctx.jpeg_options)
        ),
    )


def confirm_batch(
    config: dict[str, Any],
    run_dir: Path,
    manifest_id: str,
    index: int,
    urls_file: Path,
    records_file: Path,
    status_file: Path,
) -> list[ImageOutcome]:
    """Confirm the job's uploads (removing a mismatched object of this batch) and write the status file."""
    urls = BatchUrls.read(urls_file)
    ctx = ImageContext(config)
    entries = {(e.key, e.line) for e in batch_entries(config, run_dir, manifest_id, index)}
    outcomes = []
    for record in read_records(records_file):
        key = (record.outcome.key, record.outcome.line)
        if key not in entries:
            log.warning("%s: the job recorded a row this batch does not own (line %s); ignored", *key)
            continue
        outcome = _confirm(ctx, record, urls.image(record.outcome.key, record.outcome.line))
        if outcome.failed and not record.outcome.failed:
            log.warning("%s: not confirmed: %s", outcome.key, outcome.reason)
        outcomes.append(outcome)
    return write_outcomes(Path(status_file), outcomes)


def _confirm(ctx: ImageContext, record: JobRecord, image: ImageUrls | None) -> ImageOutcome:
    outcome = record.outcome
    if outcome.status is Status.SKIPPED and image is not None and image.action is Action.SKIP:
        return outcome
    problems: list[str] = []
    confirmed: dict[str, dict[str, Any]] = {}  # key -> its HeadObject
    for up in record.uploads:
        try:
            head = s3.head(ctx.client, ctx.output_bucket, up.key)
        except s3.S3_ERRORS as exc:
            problems.append(f"cannot confirm the stored object {up.key} ({s3.describe_error(exc)})")
            continue
        if head is None:
            if up.answered:
                problems.append(f"no object at {up.key} after its upload reported success")
            continue
        if image is None or head.get("Metadata", {}).get(UPLOAD_META) != image.token:
            if up.answered:  # another upload replaced ours since: its writer confirms its own
                problems.append(f"stored object {up.key} was replaced by another upload (left in place)")
            continue
        found = s3.stored_problems(head, up.key, up.size, up.md5)
        if found:
            problems.append(
                f"stored object {up.key} is not the file uploaded: {'; '.join(found)}{_remove(ctx, up.key, head)}"
            )
        else:
            confirmed[up.key] = head
    if outcome.status is Status.OK:
        wanted = [jpeg_key(outcome.key), *outcome.sidecars, outcome.key]
        problems += [
            f"the job reported no confirmed upload of {k}"
            for k in wanted
            if k not in confirmed and not any(k in p for p in problems)
        ]
    if not problems and not outcome.failed:
        return outcome
    # A failed image keeps no file beside its JPEG (those of this batch's token; the JPEG, confirmed, stays).
    removed = _remove_stored(
        ctx, [(k, head) for k, head in confirmed.items() if k not in (jpeg_key(outcome.key), outcome.key)]
    )
    reason = "; ".join(problems)
    if outcome.failed:
        return outcome.replace(reason="; ".join(filter(None, (outcome.reason, reason))) + removed)
    return outcome.replace(
        status=Status.FAILED,
        code=FailureCode.S3_FAILED,
        step="upload",
        reason=reason + removed,
        thumbnail=None,
        stac_item=None,
        sidecars=(),
    )
