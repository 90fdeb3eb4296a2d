"""Per-image work for one batch of manifest rows: fetch, convert, verify, upload, record the outcome.

A bad image never fails the batch: every row gets an outcome record (``ok``, ``skipped`` or ``failed``
with the step, reason and failure code: work/outcomes.py), so the aggregate always runs. A row whose
outputs are already in the output bucket, converted from the same input object (ETag kept in the COG's
metadata), is skipped.

Each converted image gets (docs/delivery.md, "What each image gets"): its COG, written with the preset of
its data kind when ``presets.enabled`` (raster/kinds.py), the JPEG preview and the files beside it (world
files, ``.aux.xml``, smaller previews), and in its outcome the kind, preset, check (with the measured error
of a lossy preset), both pixel digests and its STAC Item (work/stac.py; uploaded by the aggregate).

S3 requests per image: one HeadObject of the input (existence, size, ETag), its GET(s), a PUT per output
(JPEG, each file beside it, then the COG: the "done" marker) and a HeadObject after each (the stored object is
confirmed: size, ETag); the skip-if-done check lists the batch's output keys once (one ListObjectsV2 per
batch) and sends a HeadObject only for a COG that is already there (to read the source ETag it was made from).
"""

from __future__ import annotations

import errno
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions

from cog_pipeline import __version__
from cog_pipeline.storage import presign, s3
from cog_pipeline.core.crash import crash_point
from cog_pipeline.core.conversion import JpegOptions
from cog_pipeline.raster.convert import (
    ConversionResult,
    convert_file,
    cog_options_from_config,
    inspect_input,
    jpeg_options_from_config,
    preview_content_type,
    preview_key,
)
from cog_pipeline.raster.georef import world_file_suffix
from cog_pipeline.raster.header import ImageHeader, read_header
from cog_pipeline.raster.kinds import Preset, preset_for, presets_from_config
from cog_pipeline.core.errors import ImageError, PipelineError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.work.manifest import Entry, batch_slices, jpeg_key, parse_manifest
from cog_pipeline.work.imagelogs import capture as capture_image_log
from cog_pipeline.work.outcomes import ImageOutcome, Status, write_outcomes
from cog_pipeline.work.presigned import START_MARGIN_S, Action, BatchUrls, ImageUrls, JobRecord, Uploaded, write_records
from cog_pipeline.work.footprints import header_facts
from cog_pipeline.work import qa_step
from cog_pipeline.work import scratch
from cog_pipeline.work.stac import file_info, item_for
from cog_pipeline.raster.thumbnail import thumbnail_data_uri

log = logging.getLogger(__name__)

SOURCE_ETAG_META = "cog-pipeline-source-etag"
#: A random token per upload: tells an upload that landed from one that did not when its answer was lost.
UPLOAD_META = "cog-pipeline-upload"
#: Rows up to this manifest line get a thumbnail for the report (keeps status files and the page small).
MAX_THUMBNAIL_LINE = 1000
#: S3 error codes that mean the pipeline's keys may not do what was asked.
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


def manifest_entries(run_dir: Path, manifest: dict[str, Any]) -> list[Entry]:
    """Accepted rows of a claimed manifest, in file order."""
    return parse_manifest((Path(run_dir) / manifest["csv"]).read_bytes()).entries


def batch_entries(config: dict[str, Any], run_dir: Path, manifest_id: str, index: int) -> list[Entry]:
    """The rows batch ``index`` of manifest ``manifest_id`` owns (deterministic slicing), less those the
    delivery QA failed (work/qa_step.py: the aggregate records them)."""
    manifest = manifest_config(config, manifest_id)
    entries = manifest_entries(run_dir, manifest)
    slices = batch_slices(len(entries), int(config["batch_size"]))
    if index >= len(slices):
        return []
    start, stop = slices[index]
    return qa_step.without_failed(config, run_dir, manifest_id, entries[start:stop])


def manifest_config(config: dict[str, Any], manifest_id: str) -> dict[str, Any]:
    """The ``manifests:`` entry with this id."""
    for manifest in config.get("manifests", []):
        if manifest["id"] == manifest_id:
            return manifest
    raise KeyError(f"manifest id {manifest_id!r} not in the run config")


class ImageContext:
    """What processing an image needs: the S3 client (none with ``connect`` False: a job with presigned URLs,
    which reads no key file), settings and conversion options."""

    def __init__(self, config: dict[str, Any], threads: int | None = None, connect: bool = True):
        self.config = config
        self.settings = s3.S3Settings.from_config(config["s3"])
        self.client: Any = s3.make_client(self.settings) if connect else None
        self.transport = presign.Transport.from_settings(self.settings)
        self.input_bucket = config["s3"]["input_bucket"]
        self.output_bucket = config["s3"]["output_bucket"]
        cog_cfg = dict(config.get("cog", {}))
        if threads:
            cog_cfg["num_threads"] = str(threads)
        self.cog_options = cog_options_from_config(cog_cfg)
        #: What raster.kinds.preset_for reads: the whole config with this job's ``cog:`` (threads).
        self.preset_config = {**config, "cog": cog_cfg}
        self.presets_on = presets_from_config(config).enabled
        self.jpeg_options = jpeg_options_from_config(config.get("jpeg", {}))
        self.tmp_root = config.get("tmp_dir") or None
        #: Output keys found by the batch's one listing (None: not listed, ask per image).
        self.listed_outputs: set[str] | None = None

    def list_outputs(self, entries: list[Entry]) -> None:
        """List the batch's output keys once, so that images whose COG is absent need no HeadObject."""
        try:
            self.listed_outputs = s3.existing_keys(
                self.client, self.output_bucket, [k for e in entries for k in (e.key, jpeg_key(e.key))]
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, PipelineError) as exc:
            log.info("cannot list the batch's outputs (%s); checking each image's instead", s3.describe_error(exc))
            self.listed_outputs = None


def sidecar_suffixes(options: JpegOptions) -> tuple[str, ...]:
    """Every suffix (``raster.convert.preview_key``) of a file the previews of ``options`` may put beside the JPEG:
    with ``georeference`` the world file and ``.aux.xml``, per ``sizes`` entry its JPEG (and their two). An image
    gets a subset (no CRS: none of the georeference; GCPs only: no world file)."""
    suffixes: list[str] = []
    for size in ("", *(f".{n}" for n in options.sizes)):
        if size:
            suffixes.append(f"{size}.jpg")
        if options.georeference:
            suffixes += [size + world_file_suffix(".jpg"), f"{size}.jpg.aux.xml"]
    return tuple(suffixes)


def _s3_step(step: str, exc: BaseException) -> ImageError:
    return ImageError(step, s3.describe_error(exc), code=_s3_code(exc))


def _s3_code(exc: BaseException) -> FailureCode:
    """``s3-denied`` when S3 (or the ClientError an upload failure wraps) refused the keys, else ``s3-failed``."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, botocore.exceptions.ClientError):
            return FailureCode.S3_DENIED if s3.error_code(current) in DENIED_CODES else FailureCode.S3_FAILED
        current = current.__cause__ or current.__context__
    return FailureCode.S3_FAILED


#: The failure code of an ImageError raised without one, by step.
_STEP_CODES = {
    "download": FailureCode.S3_FAILED,
    "check-output": FailureCode.S3_FAILED,
    "upload": FailureCode.S3_FAILED,
    "validate": FailureCode.VERIFY_FAILED,
    "verify": FailureCode.VERIFY_FAILED,
}


def failure_code(exc: ImageError) -> FailureCode:
    """The code of a failed image: the raiser's, else the step's (GDAL steps: ``gdal-failed``)."""
    return exc.code or _STEP_CODES.get(exc.step, FailureCode.GDAL_FAILED)


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


def process_image(ctx: ImageContext, entry: Entry) -> ImageOutcome:
    """Convert one manifest row end to end; returns its outcome (never raises for image faults)."""
    return _outcome(entry, lambda: _process(ctx, entry))


def _outcome(entry: Entry, work: Callable[[], dict[str, Any]]) -> ImageOutcome:
    """The outcome of ``work()`` (its fields), with this image's log lines; an error fails the row only."""
    fields: dict[str, Any]
    captured: dict[str, Any] = {}
    started = time.monotonic()
    with capture_image_log(captured):  # this image's log lines -> its outcome (logs/images/ at the end)
        try:
            fields = work()
        except ImageError as exc:
            fields = {"status": Status.FAILED, "code": failure_code(exc), "step": exc.step, "reason": exc.message}
        except Exception as exc:  # one image must never take the batch down (logged with its traceback)
            log.exception("unexpected error on %s", entry.key)
            fields = {
                "status": Status.FAILED,
                "code": FailureCode.INTERNAL,
                "step": "internal",
                "reason": f"{type(exc).__name__}: {exc}",
            }
    return ImageOutcome(
        key=entry.key,
        line=entry.line,
        bands=entry.bands_text,
        **fields,
        log=tuple(captured.get("log", ())),
        seconds=round(time.monotonic() - started, 3),
    )


SKIPPED_REASON = "outputs already made from this input"


def check_source(ctx: ImageContext, entry: Entry) -> tuple[dict[str, Any], bool]:
    """The input's HeadObject and whether the row is already done (ImageError when it cannot be converted)."""
    try:
        source = s3.head(ctx.client, ctx.input_bucket, entry.key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _s3_step("download", exc) from None
    if source is None:
        raise ImageError(
            "download",
            f"input object not found in bucket '{ctx.input_bucket}'; upload it, then retry the failed rows",
            code=FailureCode.INPUT_MISSING,
        )
    if source.get("ContentLength", 0) == 0:
        raise ImageError("download", "input object is empty (0 bytes)", code=FailureCode.INPUT_EMPTY)
    try:
        return source, already_done(ctx, entry, source["ETag"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _s3_step("check-output", exc) from None


def _process(ctx: ImageContext, entry: Entry) -> dict[str, Any]:
    source, done = check_source(ctx, entry)
    etag = source["ETag"]
    if done:
        return {"status": Status.SKIPPED, "reason": SKIPPED_REASON, "input_bytes": source["ContentLength"]}

    workdir = _private_tmpdir(ctx.tmp_root)
    try:
        local_in, local_cog, local_jpg = workdir / "input.tif", workdir / "cog.tif", workdir / "preview.jpg"
        try:
            s3.download_file(
                ctx.client, ctx.input_bucket, entry.key, local_in, ctx.settings, size=source["ContentLength"], etag=etag
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if s3.is_precondition_failed(exc):
                raise ImageError(
                    "download",
                    "input object was replaced while it was being downloaded; retry the failed rows",
                    code=FailureCode.INPUT_CHANGED,
                ) from None
            raise _s3_step("download", exc) from None
        except OSError as exc:
            raise ImageError("download", _os_reason(exc, workdir), code=_os_code(exc)) from None
        crash_point("batch.downloaded")
        result = _convert(ctx, entry, workdir, source["ContentLength"])
        metadata = {SOURCE_ETAG_META: etag, "cog-pipeline-version": __version__}
        stored: list[tuple[str, dict[str, Any]]] = []  # the files beside the JPEG stored so far
        try:
            # JPEG and the files beside it first: the COG (with the source ETag) is the "done" marker checked
            # by reruns. Each is confirmed once stored; one that is not is removed (and no COG sent), a COG that
            # is not is removed. A failed image keeps no file beside the JPEG (the JPEG, confirmed, stays).
            try:
                _upload(ctx, jpeg_key(entry.key), local_jpg, "image/jpeg", metadata)
                crash_point("batch.uploaded-jpeg")
                for path, suffix in result.preview_sidecars:
                    key = preview_key(jpeg_key(entry.key), suffix)
                    stored.append((key, _upload(ctx, key, path, preview_content_type(suffix), metadata)))
                _upload(ctx, entry.key, local_cog, "image/tiff; application=geotiff; profile=cloud-optimized", metadata)
            except (
                botocore.exceptions.BotoCoreError,
                botocore.exceptions.ClientError,
                s3.boto3.exceptions.S3UploadFailedError,
            ) as exc:
                raise _s3_step("upload", exc) from None
        except ImageError as exc:
            raise ImageError(exc.step, exc.message + _remove_stored(ctx, stored), code=exc.code) from None
        crash_point("batch.uploaded")
        return _finish(ctx, entry, result, local_cog, local_jpg, source["ContentLength"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _convert(ctx: ImageContext, entry: Entry, workdir: Path, input_bytes: int) -> ConversionResult:
    """``workdir``/input.tif -> cog.tif + preview.jpg (+ the files beside it), with the image's preset when
    ``presets.enabled``."""
    try:
        preset = _preset(ctx, entry, workdir / "input.tif") if ctx.presets_on else None
        result = convert_file(
            workdir / "input.tif",
            workdir / "cog.tif",
            workdir / "preview.jpg",
            ctx.cog_options,
            ctx.jpeg_options,
            expected_bands=entry.bands,
            preset=preset,
        )
    except OSError as exc:
        raise ImageError("cog", _os_reason(exc, workdir), code=_os_code(exc)) from None
    except ImageError as exc:
        raise _space_hint(exc, workdir, input_bytes) from None
    crash_point("batch.converted")
    return result


def _preset(ctx: ImageContext, entry: Entry, local_in: Path) -> Preset:
    """The preset of the downloaded input's kind (its header and decimated read). An input whose header cannot
    be read fails as the conversion would (step ``open``, with its failure code)."""
    try:
        header = read_header(local_in, key=entry.key)
    except ImageError as exc:
        inspect_input(local_in, ctx.cog_options)  # raises the open step's own error (code) for a bad file
        raise ImageError("open", exc.message.removeprefix(f"{entry.key}: ")) from None
    return preset_for(header, ctx.preset_config)


def _finish(
    ctx: ImageContext, entry: Entry, result: ConversionResult, local_cog: Path, local_jpg: Path, input_bytes: int
) -> dict[str, Any]:
    """The ``ok`` outcome's fields, with a thumbnail for the report's first rows, the COG's map facts and the
    delivery standard's (kind, preset, check, digests, files beside the JPEG, STAC Item)."""
    fields = _result_fields(result, input_bytes)
    delivery, header = _delivery_fields(ctx, entry, result, local_cog, local_jpg)
    fields.update(delivery)
    if entry.line <= MAX_THUMBNAIL_LINE:
        try:
            fields["thumbnail"] = thumbnail_data_uri(local_cog, options=ctx.jpeg_options)  # from its overviews
        except Exception as exc:  # noqa: BLE001 - a missing thumbnail never fails an image
            log.warning("%s: no thumbnail for the report: %s", entry.key, exc)
    if header is None:
        log.warning("%s: no map footprint for the report: the COG's header could not be read", entry.key)
        return fields
    try:  # CRS, pixel size, overviews, codec and footprint for the report's columns and map, from the same header
        fields.update(header_facts(header))
    except Exception as exc:  # noqa: BLE001 - like the thumbnail, never fails an image
        log.warning("%s: no map footprint for the report: %s", entry.key, exc)
    return fields


def _delivery_fields(
    ctx: ImageContext, entry: Entry, result: ConversionResult, local_cog: Path, local_jpg: Path
) -> tuple[dict[str, Any], ImageHeader | None]:
    """Kind, preset, check and error, pixel digests, the keys beside the JPEG and the STAC Item of a converted
    image (its Item from the COG's header and the sha256 of the very files uploaded), and that header (read
    once: the map facts come from it too; None if it could not be read). With presets off the kind is still
    detected, from the COG (the same pixels, verified). An image without a CRS has no Item (a note says so); a
    failure to make one is noted, never fails the image."""
    started = time.perf_counter()
    notes = list(result.notes)
    fields: dict[str, Any] = {
        "kind": result.kind,
        "preset": result.preset,
        "check": result.check,
        "input_pixel_digest": result.input_pixel_digest,
        "cog_pixel_digest": result.cog_pixel_digest,
        "sidecars": tuple(preview_key(jpeg_key(entry.key), suffix) for _, suffix in result.preview_sidecars),
    }
    if result.error is not None:
        fields.update(max_abs_error=result.error.max_abs_error, rmse=result.error.rmse, psnr_db=result.error.psnr_db)
    header: ImageHeader | None = None
    try:
        header = read_header(local_cog, key=entry.key)
        if result.kind is None:
            disabled = preset_for(header, ctx.preset_config)
            fields.update(kind=disabled.kind.value, preset=disabled.summary())
        if header.crs_wkt is None:
            notes.append("no STAC Item: the image has no CRS")
        else:
            digests = {
                name: digest
                for name, digest in (("input", result.input_pixel_digest), ("cog", result.cog_pixel_digest))
                if digest
            }
            item = item_for(
                entry.key,
                header,
                file_info(local_cog),
                file_info(local_jpg),
                pixel_digests=digests,
                extra_properties={"cog_pipeline:kind": fields["kind"], "cog_pipeline:check": result.check},
            )
            # as the status file holds it (lists, not shapely's tuples), and strict JSON (no NaN)
            fields["stac_item"] = json.loads(json.dumps(item.to_dict(include_self_link=False), allow_nan=False))
    except Exception as exc:  # noqa: BLE001 - like the thumbnail, never fails an image
        log.warning("%s: no STAC Item: %s", entry.key, exc)
        notes.append(f"no STAC Item: {exc}")
    fields["notes"] = tuple(notes)
    seconds = dict(result.seconds)
    seconds["stac"] = time.perf_counter() - started
    fields["step_seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return fields, header


def _upload(ctx: ImageContext, key: str, path: Path, content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
    """Upload one output and confirm the stored object (size, ETag: ``s3.verify_upload``) with one
    HeadObject, which is returned; an object that is not the file (a short one, chunk framing stored inside
    it) is removed and the image fails at ``upload`` with what was expected and found.

    When boto3 gives up but the object did land (a lost answer to the last PUT or CompleteMultipartUpload,
    after retries), it is recognised by its upload token (same HeadObject) and verified instead of failing.
    """
    token = secrets.token_hex(8)
    try:
        s3.upload_file(
            ctx.client, ctx.output_bucket, key, path, ctx.settings, content_type, {**metadata, UPLOAD_META: token}
        )
    except (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        s3.boto3.exceptions.S3UploadFailedError,
    ) as exc:
        try:
            landed = s3.head(ctx.client, ctx.output_bucket, key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            landed = None
        if landed is None or landed.get("Metadata", {}).get(UPLOAD_META) != token:
            raise
        _verify(ctx, key, path, token, landed)
        log.info("%s: the upload reported %s, but the object is there, complete", key, s3.describe_error(exc))
        return landed
    try:
        landed = s3.head(ctx.client, ctx.output_bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        # Unconfirmed: not left behind as if done (a rerun would skip a COG carrying the source ETag).
        raise ImageError(
            "upload", f"cannot confirm the stored object {key} ({s3.describe_error(exc)}){_remove(ctx, key)}"
        ) from None
    if landed is None:
        raise ImageError("upload", f"no object at {key} after its upload reported success")
    _verify(ctx, key, path, token, landed)
    return landed


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


def _remove_stored(ctx: ImageContext, stored: list[tuple[str, dict[str, Any]]]) -> str:
    """Remove the objects ``stored`` (key, HeadObject) of a failed image; says so, to append to its reason."""
    if not stored:
        return ""
    failed = [f"{key}{said}" for key, head in stored if (said := _remove(ctx, key, head)) != "; the object was removed"]
    if failed:
        return f"; of the files beside the JPEG stored before, not removed: {', '.join(failed)}"
    return f"; the files beside the JPEG stored before were removed ({', '.join(k for k, _ in stored)})"


def _result_fields(result: ConversionResult, input_bytes: int) -> dict[str, Any]:
    info = result.info
    return {
        "status": Status.OK,
        "file_bands": info.count,
        "dtype": info.dtype,
        "width": info.width,
        "height": info.height,
        "input_bytes": input_bytes,
        "cog_bytes": result.cog_bytes,
        "jpeg_bytes": result.jpeg_bytes,
        "input_codec": info.compression.upper() if info.compression else None,
        "notes": tuple(result.notes),
        "step_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }


def _private_tmpdir(root: str | None) -> Path:
    try:
        return scratch.private_dir(root)
    except OSError as exc:
        raise ImageError(
            "download", f"cannot create a temp dir in {root or tempfile.gettempdir()}: {exc.strerror}"
        ) from None


def _space_hint(exc: ImageError, where: Path, input_bytes: int) -> ImageError:
    """``exc``, naming the likely cause when the temp dir is out of space.

    GDAL's TIFF writer reports a full disk as e.g. 'TIFFRewriteDirectory: Error fetching directory
    count' (the ENOSPC itself is printed to stderr by its compression threads, never raised). After
    such a failure, a device with less room left than twice the input (the COG with its overviews,
    then the JPEG) is the likely cause.
    """
    if "no space left" in exc.message.lower():  # the converter's wording of GDAL's or the OS's ENOSPC
        return ImageError(exc.step, exc.message, code=FailureCode.DISK_FULL)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return exc
    if free >= 2 * input_bytes:
        return exc
    mib = 1024 * 1024
    return ImageError(
        exc.step,
        f"{exc.message}; most likely no space left on the device holding {where.parent}: "
        f"{free / mib:.0f} MiB free for an input of {input_bytes / mib:.0f} MiB "
        "(set tmp_dir in the config to a larger disk)",
        code=FailureCode.DISK_FULL,
    )


def _os_code(exc: OSError) -> FailureCode | None:
    return FailureCode.DISK_FULL if exc.errno == errno.ENOSPC else None


def _os_reason(exc: OSError, where: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where.parent} (set tmp_dir in the config)"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def run_batch(
    config: dict[str, Any],
    run_dir: Path,
    manifest_id: str,
    index: int,
    status_file: Path,
    threads: int | None = None,
    urls_file: Path | None = None,
) -> list[ImageOutcome]:
    """Process batch ``index`` and record one outcome per row in ``status_file`` (:func:`write_outcomes`:
    appended to ``<status_file>.tmp`` as images finish, renamed once the whole batch is recorded).

    With ``urls_file`` (the batch's presigned URLs, s3.transfer: presigned) no S3 client is made and no key
    file read: ``status_file`` receives the job's records (outcome + uploads) for the access point to confirm.
    """
    scratch.sweep(config.get("tmp_dir") or None)  # what killed batch jobs on this host left there
    entries = batch_entries(config, run_dir, manifest_id, index)
    if urls_file is not None:
        return [r.outcome for r in run_presigned_batch(config, entries, Path(urls_file), Path(status_file), threads)]
    ctx = ImageContext(config, threads)
    if entries:
        ctx.list_outputs(entries)

    def processed() -> Iterator[ImageOutcome]:
        for entry in entries:
            outcome = process_image(ctx, entry)
            _log_outcome(entry, outcome)
            yield outcome

    outcomes = write_outcomes(Path(status_file), processed())
    crash_point("batch.status")
    return outcomes


def _log_outcome(entry: Entry, outcome: ImageOutcome) -> None:
    log.info(
        "%s: %s%s (%.1f s)",
        entry.key,
        outcome.status,
        f" at {outcome.step}: {outcome.reason}" if outcome.failed else "",
        outcome.seconds,
    )
    for note in outcome.notes:
        log.info("%s: note: %s", entry.key, note)


# ------------------------------------------------------------------------------ presigned URLs (no key here)


def run_presigned_batch(
    config: dict[str, Any], entries: list[Entry], urls_file: Path, records_file: Path, threads: int | None = None
) -> list[JobRecord]:
    """The batch with the access point's presigned URLs: one JobRecord per row in ``records_file``."""
    urls = BatchUrls.read(urls_file)
    ctx = ImageContext(config, threads, connect=False)
    log.info("batch %s/%s: presigned URLs (%s); no S3 keys on this machine", urls.manifest, urls.batch, urls.describe())

    def processed() -> Iterator[JobRecord]:
        for entry in entries:
            uploads: list[Uploaded] = []
            image = urls.image(entry.key, entry.line)
            outcome = _outcome(entry, lambda: _process_presigned(ctx, entry, image, urls, uploads))  # noqa: B023
            _log_outcome(entry, outcome)
            yield JobRecord(outcome, tuple(uploads))

    records = write_records(records_file, processed())
    crash_point("batch.status")
    return records


def _expired(urls: BatchUrls, step: str) -> ImageError:
    return ImageError(
        step,
        f"the batch's presigned URLs expired before this image's {step} ({urls.describe()}); "
        "the job started too late (a long wait in the queue?): run `cog-pipeline retry` on "
        "the failed CSV, which signs new URLs (raise s3.presign_expiry_s for long queues)",
        code=FailureCode.URLS_EXPIRED,
    )


def _url_error(step: str, exc: presign.PresignedError, urls: BatchUrls) -> ImageError:
    """The row's failure for a presigned request that failed (its code from what S3 answered)."""
    if exc.expired:
        return _expired(urls, step)
    if step == "download" and exc.precondition_failed:
        return ImageError(
            "download",
            f"input object was replaced since the batch was planned ({exc}); retry the failed rows",
            code=FailureCode.INPUT_CHANGED,
        )
    if step == "download" and exc.missing:
        return ImageError(
            "download",
            f"input object disappeared since the batch was planned ({exc}); upload it, then retry the failed rows",
            code=FailureCode.INPUT_MISSING,
        )
    return ImageError(step, str(exc), code=FailureCode.S3_DENIED if exc.denied else FailureCode.S3_FAILED)


def _process_presigned(
    ctx: ImageContext, entry: Entry, image: ImageUrls | None, urls: BatchUrls, uploads: list[Uploaded]
) -> dict[str, Any]:
    """One row with presigned URLs: the access point's decision (skip, fail) or download, convert, PUT the
    outputs (JPEG, the files beside it, COG, as direct), each PUT appended to ``uploads`` for the access point to
    confirm (which also removes the files beside the JPEG of an image that failed)."""
    if image is None:
        raise ImageError(
            "internal", f"no presigned URLs for line {entry.line} in the batch's URL file", code=FailureCode.INTERNAL
        )
    if image.action is Action.FAIL:
        raise ImageError(image.step or "download", image.reason, code=image.code)
    if image.action is Action.SKIP:
        return {"status": Status.SKIPPED, "reason": image.reason or SKIPPED_REASON, "input_bytes": image.input_bytes}
    if image.get is None or image.jpeg_put is None or image.cog_put is None or image.input_bytes is None:
        raise ImageError("internal", "the batch's URL file lacks this row's requests", code=FailureCode.INTERNAL)
    jpeg_put, cog_put = image.jpeg_put, image.cog_put
    if urls.time_left() < START_MARGIN_S:
        raise _expired(urls, "download")
    workdir = _private_tmpdir(ctx.tmp_root)
    try:
        try:
            presign.download(ctx.transport, image.get, workdir / "input.tif", image.input_bytes, image.source_etag)
        except presign.PresignedError as exc:
            raise _url_error("download", exc, urls) from None
        except OSError as exc:
            raise ImageError("download", _os_reason(exc, workdir), code=_os_code(exc)) from None
        crash_point("batch.downloaded")
        result = _convert(ctx, entry, workdir, image.input_bytes)
        jpeg = jpeg_key(entry.key)
        beside = []  # every file beside the JPEG has its URL, or nothing is sent
        for path, suffix in result.preview_sidecars:
            request = image.sidecar_put(suffix)
            if request is None:
                raise ImageError(
                    "internal",
                    f"no presigned URL for {preview_key(jpeg, suffix)} in the batch's URL "
                    "file (the access point's jpeg: settings differ from this job's?)",
                    code=FailureCode.INTERNAL,
                )
            beside.append((request, path, preview_key(jpeg, suffix)))
        _put(ctx, jpeg_put, workdir / "preview.jpg", jpeg, urls, uploads)
        crash_point("batch.uploaded-jpeg")
        for request, path, key in beside:
            _put(ctx, request, path, key, urls, uploads)
        _put(ctx, cog_put, workdir / "cog.tif", entry.key, urls, uploads)
        crash_point("batch.uploaded")
        return _finish(ctx, entry, result, workdir / "cog.tif", workdir / "preview.jpg", image.input_bytes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _put(
    ctx: ImageContext, request: presign.SignedRequest, path: Path, key: str, urls: BatchUrls, uploads: list[Uploaded]
) -> None:
    """PUT one output; recorded in ``uploads`` whatever the answer (a PUT whose answer was lost may have landed)."""
    size, md5 = path.stat().st_size, presign.md5_of(path)
    try:
        answered = presign.upload(ctx.transport, request, path, md5)
    except presign.PresignedError as exc:
        uploads.append(Uploaded(key, size, md5))
        raise _url_error("upload", exc, urls) from None
    except PipelineError as exc:  # larger than one PUT may be: nothing sent
        raise ImageError("upload", str(exc), code=FailureCode.S3_FAILED) from None
    uploads.append(Uploaded(key, size, md5, answered.strip('"')))
