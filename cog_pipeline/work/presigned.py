"""Presigned transfers, the files between the access point and a batch job (docs/htcondor.md, "No key on
execute points").

``s3.transfer`` says which way batch jobs reach S3: ``direct`` (a boto3 client with the run's key files) or
``presigned`` (the access point signs each image's GET and PUTs; the job holds URLs, no key). ``auto``
(the default) is ``presigned`` for the htcondor executor and ``direct`` for local runs.

The access point writes a batch's :class:`BatchUrls` (``urls/<m>/batch-<n>.json``: per row, convert with
these URLs, skip, or fail with a reason decided there); the job writes one :class:`JobRecord` per row
(``uploads/<m>/batch-<n>.jsonl``: its outcome and what it uploaded: key, size, MD5, the JPEG's side files
included); the access point confirms the uploads and writes the batch's status file (work/signing.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.transfer import DIRECT, PRESIGNED, TRANSFER_MODES, transfer_mode
from cog_pipeline.storage.presign import DEFAULT_EXPIRY_S, SignedRequest, check_expiry
from cog_pipeline.work.outcomes import ImageOutcome

#: An image does not start when its URLs have less than this left (its download would race the expiry).
START_MARGIN_S = 60.0
__all__ = [
    "DIRECT",
    "PRESIGNED",
    "TRANSFER_MODES",
    "Action",
    "BatchUrls",
    "ImageUrls",
    "JobRecord",
    "Uploaded",
    "discard_urls",
    "expiry_s",
    "read_records",
    "records_path",
    "transfer_mode",
    "urls_path",
    "write_records",
]


def expiry_s(config: dict[str, Any]) -> int:
    """How long a batch's URLs are valid (``s3.presign_expiry_s``, default 6 h)."""
    return check_expiry((config.get("s3") or {}).get("presign_expiry_s", DEFAULT_EXPIRY_S))


def urls_path(run_dir: Path, manifest_id: str, batch: str) -> Path:
    return Path(run_dir) / "urls" / manifest_id / f"batch-{batch}.json"


def records_path(run_dir: Path, manifest_id: str, batch: str) -> Path:
    return Path(run_dir) / "uploads" / manifest_id / f"batch-{batch}.jsonl"


def discard_urls(run_dir: Path, manifest_id: str) -> None:
    """Remove a manifest's URL files (Snakemake removes each once its batch is confirmed; a batch that did not
    finish leaves its own): they name the access key id and stay usable until they expire."""
    folder = Path(run_dir) / "urls" / manifest_id
    for path in folder.glob("batch-*.json*"):
        path.unlink(missing_ok=True)


class Action(str, Enum):
    """What the job does with a row, as the access point decided."""

    CONVERT = "convert"
    SKIP = "skip"
    FAIL = "fail"


def _request(data: Any) -> SignedRequest | None:
    return SignedRequest.from_dict(data) if isinstance(data, dict) else None


@dataclass(frozen=True)
class ImageUrls:
    """One row: its action; for ``convert`` the input's size and ETag, the upload token, the GET, the JPEG's and
    COG's PUTs and a PUT per file the previews may put beside the JPEG (``sidecar_puts``: (suffix, request), the
    suffix as ``raster.convert.preview_key`` takes it)."""

    key: str
    line: int
    action: Action
    input_bytes: int | None = None
    source_etag: str | None = None
    token: str = ""
    get: SignedRequest | None = None
    jpeg_put: SignedRequest | None = None
    cog_put: SignedRequest | None = None
    sidecar_puts: tuple[tuple[str, SignedRequest], ...] = ()
    code: FailureCode | None = None
    step: str | None = None
    reason: str = ""

    def sidecar_put(self, suffix: str) -> SignedRequest | None:
        """The PUT of the file beside the JPEG with this suffix (None: not signed)."""
        return dict(self.sidecar_puts).get(suffix)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "line": self.line, "action": self.action.value}
        for name in ("input_bytes", "source_etag", "step"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.token:
            out["token"] = self.token
        for name in ("get", "jpeg_put", "cog_put"):
            request = getattr(self, name)
            if request is not None:
                out[name] = request.as_dict()
        if self.sidecar_puts:
            out["sidecar_puts"] = {suffix: request.as_dict() for suffix, request in self.sidecar_puts}
        if self.code is not None:
            out["code"] = self.code.value
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageUrls:
        return cls(
            key=str(data["key"]),
            line=int(data["line"]),
            action=Action(data["action"]),
            input_bytes=data.get("input_bytes"),
            source_etag=data.get("source_etag"),
            token=str(data.get("token", "")),
            get=_request(data.get("get")),
            jpeg_put=_request(data.get("jpeg_put")),
            cog_put=_request(data.get("cog_put")),
            sidecar_puts=tuple(
                (str(suffix), SignedRequest.from_dict(request))
                for suffix, request in (data.get("sidecar_puts") or {}).items()
            ),
            code=FailureCode(data["code"]) if data.get("code") else None,
            step=data.get("step"),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class BatchUrls:
    """A batch's presigned requests, made at ``made_at`` and valid until ``expires_at`` (epoch seconds)."""

    manifest: str
    batch: str
    made_at: float
    expires_at: float
    images: tuple[ImageUrls, ...]

    def image(self, key: str, line: int | None) -> ImageUrls | None:
        for image in self.images:
            if image.key == key and (line is None or image.line == line):
                return image
        return None

    def time_left(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def describe(self) -> str:
        """When the URLs were made and until when they are valid (UTC), for reasons."""
        fmt = "%Y-%m-%d %H:%M:%S UTC"
        return (
            f"made {time.strftime(fmt, time.gmtime(self.made_at))}, valid until "
            f"{time.strftime(fmt, time.gmtime(self.expires_at))} (s3.presign_expiry_s "
            f"{self.expires_at - self.made_at:.0f} s)"
        )

    def write(self, path: Path) -> None:
        """Write atomically (private: the URLs are bearer tokens until they expire)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "manifest": self.manifest,
            "batch": self.batch,
            "made_at": self.made_at,
            "expires_at": self.expires_at,
            "images": [i.as_dict() for i in self.images],
        }
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.write("\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> BatchUrls:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                manifest=str(data["manifest"]),
                batch=str(data["batch"]),
                made_at=float(data["made_at"]),
                expires_at=float(data["expires_at"]),
                images=tuple(ImageUrls.from_dict(i) for i in data["images"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PipelineError(f"cannot read the batch's presigned URLs {path}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Uploaded:
    """One PUT the job sent: the key, the file's size and MD5, and the ETag answered ('' without an answer)."""

    key: str
    size: int
    md5: str
    answered: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "md5": self.md5, "answered": self.answered}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Uploaded:
        return cls(
            key=str(data["key"]), size=int(data["size"]), md5=str(data["md5"]), answered=str(data.get("answered", ""))
        )


@dataclass(frozen=True)
class JobRecord:
    """What the job says of a row: its outcome as it saw it and the uploads to confirm."""

    outcome: ImageOutcome
    uploads: tuple[Uploaded, ...] = ()


def write_records(path: Path, records: Iterable[JobRecord]) -> list[JobRecord]:
    """Append each record to ``<path>.tmp`` as it comes (flushed), rename to ``path`` when all are written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    written = []
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            line = {"outcome": record.outcome.to_record(), "uploads": [u.as_dict() for u in record.uploads]}
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            fh.flush()
            written.append(record)
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return written


def read_records(path: Path) -> Iterator[JobRecord]:
    """The job's records, in order (PipelineError naming the line of one that is not)."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                yield JobRecord(
                    ImageOutcome.from_record(data["outcome"]),
                    tuple(Uploaded.from_dict(u) for u in data.get("uploads") or ()),
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise PipelineError(f"{path}, line {number}: not a batch job record ({exc})") from None
