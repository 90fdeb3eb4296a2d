"""The CSV manifest: parse it into accepted entries and rejected rows, and write outcome CSVs back.

A manifest row is ``path/to/image.tif,<NUM BANDS>``: the key of an input object and its band count
(the key ends in ``.tif`` or ``.tiff``, any case: :func:`cog_pipeline.core.naming.tiff_suffix`).
Parsing is pure (bytes in, :class:`Manifest` out) and never raises for bad content: every non-blank,
non-header line ends up exactly once in ``entries`` or ``rejected``; only blank lines are skipped,
and they are counted in ``notes``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cog_pipeline.core.naming import TIFF_SUFFIXES, is_tiff_key
from cog_pipeline.core.naming import jpeg_key as jpeg_key  # re-exported: batch, aggregate and bench import it here

if TYPE_CHECKING:
    from _csv import Reader as _csv_reader

#: Band counts above this are taken for a typo, not a real image.
MAX_BANDS = 10_000
#: ``csv.field_size_limit`` is raised to at least this (and to the manifest's size), never lowered.
MIN_FIELD_SIZE_LIMIT = 64 * 1024 * 1024
#: csv.field_size_limit takes a C long; stay within 32 bits so it works everywhere.
_MAX_FIELD_SIZE_LIMIT = 2**31 - 1

_INT = re.compile(r"[+-]?[0-9]+")
# Backslash, ASCII control characters (C0 and DEL): never allowed in a key.
_BAD_KEY_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")
# Lone surrogates: surrogateescape'd undecodable bytes (U+DC80..U+DCFF) or anything else unencodable.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_CONTROL_NAMES = {0x00: "NUL", 0x09: "tab", 0x0A: "line feed", 0x0D: "carriage return", 0x7F: "DEL"}


@dataclass(frozen=True, slots=True)
class Entry:
    """An accepted manifest row."""

    line: int  #: 1-based physical line number where the row starts
    key: str  #: object key in the input bucket, exactly as written
    bands: int  #: expected band count
    bands_text: str  #: the band field exactly as written (for writing outcome CSVs back)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A manifest row that cannot be processed; it becomes a failed row with ``reason``."""

    line: int  #: 1-based physical line number where the row starts
    key: str  #: first field as written ('' if none); undecodable bytes replaced by U+FFFD
    bands_text: str  #: second field as written ('' if none); undecodable bytes replaced by U+FFFD
    raw: list[str]  #: all fields as parsed (undecodable bytes kept as surrogate escapes: lossless)
    reason: str  #: user-facing, starts with "line N: "


@dataclass
class Manifest:
    """A parsed manifest: accepted entries and rejected rows in file order, plus notes."""

    entries: list[Entry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rows_total(self) -> int:
        """Number of data rows (accepted + rejected); blank lines and the header are not rows."""
        return len(self.entries) + len(self.rejected)


def _show(text: str, limit: int = 40) -> str:
    """A value quoted for a reason text, cut short if long."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _replace_bad(text: str) -> str:
    """``text`` with undecodable bytes / lone surrogates replaced by U+FFFD (safe to encode as UTF-8)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _raise_field_limit(size: int) -> None:
    """Make sure csv can read a field of ``size`` characters; only ever raises the global limit."""
    needed = min(max(MIN_FIELD_SIZE_LIMIT, size + 1), _MAX_FIELD_SIZE_LIMIT)
    if csv.field_size_limit() < needed:
        csv.field_size_limit(needed)


def csv_reader(text: str) -> _csv_reader:
    """The rows of a CSV text we wrote (outcome CSVs: a key or reason may be megabytes long, as the manifest
    row it came from), with the csv module's field limit raised to fit, as the manifest parser does."""
    _raise_field_limit(len(text))
    return csv.reader(io.StringIO(text, newline=""))


def _key_problems(key: str, max_key_bytes: int) -> list[str]:
    """Everything wrong with a key (empty list if it is acceptable)."""
    if key.strip() == "":
        return ["empty key (the first column must be the object key, e.g. 'folder/image.tif')"]
    problems = []
    if key.startswith("/"):
        problems.append("key starts with '/' (keys are relative to the input bucket; remove the leading '/')")
    if not is_tiff_key(key):
        stripped = key.rstrip()
        if stripped != key and is_tiff_key(stripped):
            problems.append(f"key has whitespace after {stripped[stripped.rindex('.') :]!r} (remove it)")
        else:
            problems.append(
                f"key {_show(key)} does not end in '.tif' or '.tiff' "
                "(only GeoTIFF keys are accepted; any case: .tif, .TIF, .tiff, .TIFF)"
            )
    if ".." in key.split("/"):
        problems.append("key contains a '..' path segment (not allowed)")
    bad = _BAD_KEY_CHAR.search(key)
    if bad:
        char = bad.group()
        if char == "\\":
            problems.append("key contains a backslash '\\' (use '/' to separate folders)")
        elif char in "\r\n":
            problems.append(
                "key contains a line break (a '\"' opened on this line is closed on a later line "
                "or never; check the quoting)"
            )
        else:
            code = ord(char)
            name = _CONTROL_NAMES.get(code)
            label = f"U+{code:04X}" + (f" {name}" if name else "")
            problems.append(f"key contains a control character ({label}) at position {bad.start() + 1}")
    if len(key) * 4 > max_key_bytes:  # cheap pre-check: a character is at most 4 bytes in UTF-8
        size = len(key.encode("utf-8", "surrogateescape"))
        if size > max_key_bytes:
            problems.append(f"key is {size} bytes in UTF-8, longer than the {max_key_bytes}-byte limit")
    return problems


def _bands_problem(bands_text: str) -> tuple[int | None, str | None]:
    """``(bands, None)`` for a valid band field, else ``(None, problem)``."""
    text = bands_text.strip()
    if text == "":
        return None, "band count is empty (expected a positive integer such as 3)"
    if not _INT.fullmatch(text):
        return None, f"band count {_show(text)} is not an integer (write a whole number such as 3)"
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-").lstrip("0") or "0"
    if sign < 0 or digits == "0":
        return None, f"band count must be a positive integer, got {_show(text)}"
    if len(digits) > len(str(MAX_BANDS)) or int(digits) > MAX_BANDS:
        return None, f"band count {_show(text)} is implausibly large (at most {MAX_BANDS})"
    return int(digits), None


def _is_header(row: list[str]) -> bool:
    """True for a first row that names the columns rather than giving a key and band count."""
    if len(row) < 2 or _SURROGATE.search(row[0] + row[1]):
        return False
    key, bands = row[0].strip(), row[1].strip()
    return (
        not _INT.fullmatch(bands)
        and any(c.isalpha() for c in bands)
        and not key.lower().endswith(TIFF_SUFFIXES)
        and "/" not in key
    )


def parse_manifest(data: bytes, max_key_bytes: int = 1024) -> Manifest:
    """Parse a manifest; never raises for bad content (bad rows become :class:`Rejected`)."""
    manifest = Manifest()
    if not data:
        manifest.notes.append("manifest is empty")
        return manifest
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        manifest.notes.append("manifest starts with a UTF-16 byte order mark; save it as UTF-8")
    try:
        text, undecodable = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, undecodable = data.decode("utf-8", "surrogateescape"), True
    if text.startswith("\ufeff"):
        text = text[1:]
        manifest.notes.append("UTF-8 BOM removed")
    _raise_field_limit(len(text))

    lines = list(io.StringIO(text, newline=""))  # splits on \n, \r\n and \r, as csv expects
    reader = csv.reader(lines)
    blank = 0
    seen_data = False
    first_line: dict[str, int] = {}
    first_preview: dict[str, tuple[int, str]] = {}  # JPEG key -> (line, key) of the first row with it
    prev = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # defensive: should not happen with the raised field limit
            start, prev = prev + 1, reader.line_num
            raw_text = "".join(lines[start - 1 : prev]).rstrip("\r\n")
            manifest.rejected.append(
                Rejected(start, _replace_bad(raw_text), "", [raw_text], f"line {start}: cannot be read as CSV ({exc})")
            )
            seen_data = True
            continue
        line, prev = prev + 1, reader.line_num

        if not row or (not row[0].strip() and all(not f.strip() for f in row)):
            blank += 1
            continue
        if not seen_data:
            seen_data = True
            if _is_header(row):
                manifest.notes.append(f"line {line}: header row skipped")
                continue

        key = row[0]
        bands_text = row[1] if len(row) > 1 else ""
        if undecodable and any(_ESCAPED_BYTE.search(f) for f in row):
            manifest.rejected.append(
                Rejected(
                    line,
                    _replace_bad(key),
                    _replace_bad(bands_text),
                    row,
                    f"line {line}: not valid UTF-8 (save the manifest as UTF-8)",
                )
            )
            continue
        if len(row) > 2:
            extra = row[2:]
            hint = (
                "remove the trailing comma(s)"
                if all(not f.strip() for f in extra)
                else "if the key contains a comma, wrap the key in double quotes"
            )
            reason = f"line {line}: {len(row)} columns, expected 2 (key,bands); {hint}"
            manifest.rejected.append(Rejected(line, key, bands_text, row, reason))
            continue

        # Fast paths for the common, valid case; the full checks name every problem.
        if (
            not key.startswith("/")
            and is_tiff_key(key)
            and ".." not in key
            and len(key) * 4 <= max_key_bytes
            and not _BAD_KEY_CHAR.search(key)
        ):
            problems = []
        else:
            problems = _key_problems(key, max_key_bytes)
        bands: int | None = None
        if len(row) < 2:
            problems.append("missing band count (1 column, expected 2: key,bands)")
        elif (
            bands_text.isdigit()
            and bands_text.isascii()
            and len(bands_text) <= 4
            and bands_text != "0" * len(bands_text)
        ):
            bands = int(bands_text)
        else:
            bands, problem = _bands_problem(bands_text)
            if problem:
                problems.append(problem)
        preview = jpeg_key(key) if not problems else ""
        if not problems and key in first_line:
            problems.append(f"duplicate of line {first_line[key]} (each key may be listed once)")
        elif not problems and preview in first_preview:
            other = first_preview[preview]
            problems.append(
                f"same preview key {preview!r} as line {other[0]} ({other[1]!r}): two images "
                "whose keys differ only in the extension would overwrite each other's JPEG; rename one"
            )
        if problems:
            manifest.rejected.append(Rejected(line, key, bands_text, row, f"line {line}: " + "; ".join(problems)))
            continue
        assert bands is not None
        first_line[key] = line
        first_preview.setdefault(preview, (line, key))
        manifest.entries.append(Entry(line, key, bands, bands_text))

    if blank:
        manifest.notes.append(f"{blank} blank line{'s' if blank != 1 else ''} skipped")
    if not manifest.rows_total():
        manifest.notes.append("manifest has no data rows")
    return manifest


def batch_slices(n_entries: int, batch_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n_entries)`` in order, each at most ``batch_size`` long."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if n_entries < 0:
        raise ValueError(f"n_entries must not be negative, got {n_entries}")
    return [(start, min(start + batch_size, n_entries)) for start in range(0, n_entries, batch_size)]


@lru_cache(maxsize=64)
def _read_manifest(path: str, _size: int, _mtime_ns: int) -> Manifest:
    return parse_manifest(Path(path).read_bytes())


def read_manifest(path: Path | str) -> Manifest:
    """The claimed manifest CSV at ``path``, parsed once per process while the file is unchanged (size and
    mtime): Snakemake's input functions, the progress bar and status share one parse. Do not modify it."""
    path = Path(path).resolve()
    stat = path.stat()
    return _read_manifest(str(path), stat.st_size, stat.st_mtime_ns)


def _write(rows: Iterable[Iterable[str]], header: list[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return _replace_bad(out.getvalue()).encode("utf-8")


def write_rows_csv(rows: Iterable[tuple[str, str]]) -> bytes:
    """Rows ``key,bands`` as UTF-8 CSV (csv-module quoting, ``\\n`` line ends, no header)."""
    return _write(rows)


def write_errors_csv(rows: Iterable[tuple[str, str, str]]) -> bytes:
    """Header ``key,bands,reason`` then the rows, as UTF-8 CSV with ``\\n`` line ends."""
    return _write(rows, header=["key", "bands", "reason"])
