"""Manifest parsing, validation and writing: every rule, round trips, and the no-row-lost property."""

from __future__ import annotations

import csv
import io

import pytest

from cog_pipeline.work.manifest import (
    Entry,
    Manifest,
    Rejected,
    batch_slices,
    jpeg_key,
    parse_manifest,
    write_errors_csv,
    write_rows_csv,
)


def parse(text: str, **kwargs) -> Manifest:
    return parse_manifest(text.encode("utf-8"), **kwargs)


def only_rejected(text: str, **kwargs) -> Rejected:
    m = parse(text, **kwargs)
    assert m.entries == [], m.entries
    assert len(m.rejected) == 1, m.rejected
    return m.rejected[0]


def reject_reason(row: str, line: int = 2, **kwargs) -> str:
    """Reason for ``row`` placed on ``line`` after good rows (so it is never taken for a header)."""
    good = "".join(f"good/{i}.tif,1\n" for i in range(line - 1))
    m = parse(good + row + "\n", **kwargs)
    assert [e.line for e in m.entries] == list(range(1, line))
    assert len(m.rejected) == 1, m.rejected
    rejected = m.rejected[0]
    assert rejected.line == line
    assert rejected.reason.startswith(f"line {line}: "), rejected.reason
    return rejected.reason


# --- basics -----------------------------------------------------------------------------------


def test_simple_manifest():
    m = parse("a/b.tif,3\nc.tif,1\n")
    assert m.entries == [Entry(1, "a/b.tif", 3, "3"), Entry(2, "c.tif", 1, "1")]
    assert m.rejected == [] and m.notes == []
    assert m.rows_total() == 2


def test_no_trailing_newline():
    assert parse("a.tif,3").entries == [Entry(1, "a.tif", 3, "3")]


def test_empty_bytes():
    m = parse_manifest(b"")
    assert (m.entries, m.rejected, m.notes) == ([], [], ["manifest is empty"])
    assert m.rows_total() == 0


def test_only_blank_lines_is_noted():
    m = parse("\n   \n,\n")
    assert m.entries == [] and m.rejected == []
    assert "3 blank lines skipped" in m.notes
    assert "manifest has no data rows" in m.notes


def test_keys_with_spaces_and_non_ascii_kept_exactly():
    m = parse("imagery/county scans/shade é.tif,1\n  lead space.tif,2\n日本/画像.tif,3\n")
    assert [e.key for e in m.entries] == ["imagery/county scans/shade é.tif", "  lead space.tif", "日本/画像.tif"]
    assert m.rejected == []


def test_quoted_key_with_comma_and_quote():
    m = parse('"a,b/c.tif",3\n"say ""hi"".tif",2\n')
    assert [e.key for e in m.entries] == ["a,b/c.tif", 'say "hi".tif']


def test_band_field_whitespace_stripped_but_kept_as_written():
    m = parse("a.tif, 3 \nb.tif,\t4\n")
    assert m.entries == [Entry(1, "a.tif", 3, " 3 "), Entry(2, "b.tif", 4, "\t4")]


def test_band_field_leading_plus_and_zeros():
    m = parse("a.tif,+3\nb.tif,007\n")
    assert [(e.bands, e.bands_text) for e in m.entries] == [(3, "+3"), (7, "007")]


def test_max_band_count_accepted():
    assert parse("a.tif,10000\n").entries == [Entry(1, "a.tif", 10000, "10000")]


def test_entries_in_file_order_and_deterministic():
    text = "".join(f"k/{i}.tif,{i % 5 + 1}\n" for i in range(50, 0, -1))
    first, second = parse(text), parse(text)
    assert first == second
    assert [e.key for e in first.entries] == [f"k/{i}.tif" for i in range(50, 0, -1)]
    assert [e.line for e in first.entries] == list(range(1, 51))


# --- encoding, line ends, blank lines, header --------------------------------------------------


def test_bom_and_crlf():
    m = parse_manifest("\ufeffa.tif,3\r\nb é.tif,1\r\n".encode("utf-8"))
    assert m.entries == [Entry(1, "a.tif", 3, "3"), Entry(2, "b é.tif", 1, "1")]
    assert "UTF-8 BOM removed" in m.notes


def test_bom_header_and_crlf():
    m = parse_manifest(b"\xef\xbb\xbfkey,bands\r\na.tif,3\r\n")
    assert m.entries == [Entry(2, "a.tif", 3, "3")]
    assert m.notes == ["UTF-8 BOM removed", "line 1: header row skipped"]


def test_mixed_line_endings_count_physical_lines():
    m = parse("a.tif,1\r\nb.tif,2\nc.tif,3\rd.tif,4\r\n")
    assert [(e.line, e.key) for e in m.entries] == [(1, "a.tif"), (2, "b.tif"), (3, "c.tif"), (4, "d.tif")]


def test_blank_lines_skipped_and_counted_lines_still_physical():
    m = parse("\na.tif,1\n\n  \n , \nb.tif,2\n")
    assert [(e.line, e.key) for e in m.entries] == [(2, "a.tif"), (6, "b.tif")]
    assert m.notes == ["4 blank lines skipped"]


def test_one_blank_line_note_singular():
    assert parse("a.tif,1\n\nb.tif,2\n").notes == ["1 blank line skipped"]


@pytest.mark.parametrize("header", ["key,bands", "path,num_bands", "image,bands", "Key , Bands "])
def test_header_row_skipped(header):
    m = parse(f"{header}\na.tif,3\n")
    assert m.entries == [Entry(2, "a.tif", 3, "3")]
    assert m.rejected == []
    assert m.notes == ["line 1: header row skipped"]


def test_header_after_leading_blank_lines_uses_its_line_number():
    m = parse("\n\nkey,bands\na.tif,3\n")
    assert m.entries == [Entry(4, "a.tif", 3, "3")]
    assert "line 3: header row skipped" in m.notes


def test_header_like_row_later_is_rejected_not_skipped():
    m = parse("a.tif,3\nkey,bands\n")
    assert [e.key for e in m.entries] == ["a.tif"]
    [r] = m.rejected
    assert r.line == 2 and "not an integer" in r.reason and "'bands'" in r.reason
    assert not any("header" in n for n in m.notes)


def test_second_header_after_a_header_is_rejected():
    m = parse("key,bands\nkey,bands\na.tif,1\n")
    assert m.notes == ["line 1: header row skipped"]
    assert [r.line for r in m.rejected] == [2]


@pytest.mark.parametrize(
    "first",
    [
        "a.tif,x",  # key ends in .tif: a bad data row, not a header
        "a/b.png,x",  # looks like a path
        "a.TIF,bands",  # a (mis-cased) image key
        "key.tif,bands",
        "a.png,3",  # integer band field
        "nobands",  # single column
    ],
)
def test_first_row_that_is_not_a_header_is_rejected(first):
    m = parse(f"{first}\ngood.tif,1\n")
    assert [r.line for r in m.rejected] == [1], m
    assert [e.line for e in m.entries] == [2]
    assert not any("header" in n for n in m.notes)


def test_invalid_utf8_row_rejected_others_kept():
    data = b"a.tif,3\nbad\xff\xfe.tif,2\nc.tif,1\nd.tif,\xc3\n"
    m = parse_manifest(data)
    assert [e.key for e in m.entries] == ["a.tif", "c.tif"]
    assert [r.line for r in m.rejected] == [2, 4]
    bad, bad_bands = m.rejected
    assert bad.reason.startswith("line 2: not valid UTF-8")
    assert bad.key == "bad\ufffd\ufffd.tif" and bad.bands_text == "2"
    # raw keeps the undecodable bytes (surrogate escapes): lossless.
    assert bad.raw[0].encode("utf-8", "surrogateescape") == b"bad\xff\xfe.tif"
    assert bad_bands.reason.startswith("line 4: not valid UTF-8")
    assert bad_bands.key == "d.tif" and bad_bands.bands_text == "\ufffd"
    # The replaced key can be written out as valid UTF-8.
    write_rows_csv([(bad.key, bad.bands_text)]).decode("utf-8")


def test_invalid_utf8_only_line_is_not_dropped_as_blank():
    m = parse_manifest(b"a.tif,1\n\xff\n")
    assert [r.line for r in m.rejected] == [2]
    assert "not valid UTF-8" in m.rejected[0].reason


def test_latin1_manifest_rejects_only_the_non_ascii_rows():
    m = parse_manifest("a.tif,1\nshade é.tif,1\n".encode("latin-1"))
    assert [e.key for e in m.entries] == ["a.tif"]
    assert m.rejected[0].line == 2 and m.rejected[0].key == "shade \ufffd.tif"


def test_utf16_manifest_does_not_crash_and_is_noted():
    m = parse_manifest("a.tif,1\n".encode("utf-16"))
    assert m.entries == []
    assert m.rejected[0].line == 1 and "not valid UTF-8" in m.rejected[0].reason
    # The NUL left after the last "\n" is a row of its own, rejected rather than dropped.
    assert [r.line for r in m.rejected] == [1, 2] and "U+0000 NUL" in m.rejected[1].reason
    assert any("UTF-16" in n for n in m.notes)


# --- key rules ----------------------------------------------------------------------------------


def test_empty_key():
    reason = reject_reason(",3", line=2)
    assert "empty key" in reason


def test_whitespace_only_key_is_empty():
    reason = reject_reason("   ,3", line=2)
    assert "empty key" in reason


def test_leading_slash():
    reason = reject_reason("/imagery/a.tif,3", line=7)
    assert reason.startswith("line 7: key starts with '/'")
    assert "remove the leading '/'" in reason


@pytest.mark.parametrize(
    "key,jpeg",
    [("a.TIF", "a.jpg"), ("d/a.tiff", "d/a.jpg"), ("a.Tif", "a.jpg"), ("x.tif.TIFF", "x.tif.jpg"), ("a.tif", "a.jpg")],
)
def test_tiff_and_any_case_are_accepted_and_the_jpeg_replaces_the_extension(key, jpeg):
    """An extension of the original's '.tif' rule: '.tiff' and any case (Windows exports)."""
    m = parse(f"{key},1\n")
    assert [e.key for e in m.entries] == [key] and not m.rejected
    assert jpeg_key(key) == jpeg


def test_keys_that_differ_only_in_the_extension_would_share_a_preview():
    m = parse("d/a.tif,1\nd/a.TIFF,1\nd/b.tiff,1\n")
    assert [e.key for e in m.entries] == ["d/a.tif", "d/b.tiff"]
    [r] = m.rejected
    assert r.line == 2 and r.reason.startswith("line 2: same preview key 'd/a.jpg' as line 1 ('d/a.tif')")


@pytest.mark.parametrize("key", ["imagery/rgb.png", "a.tif.bak", "a", "tif", "a.jpg", "a.tiff.bak", "a.tifff"])
def test_not_tif(key):
    reason = reject_reason(f"{key},1", line=2)
    assert "does not end in '.tif' or '.tiff'" in reason and repr(key) in reason
    with pytest.raises(ValueError, match="does not end in"):
        jpeg_key(key)


@pytest.mark.parametrize("key,suffix", [("a.tif  ", "'.tif'"), ("a.TIFF ", "'.TIFF'")])
def test_trailing_whitespace_after_tif(key, suffix):
    reason = reject_reason(f"{key},1", line=2)
    assert f"whitespace after {suffix}" in reason


@pytest.mark.parametrize("key", ["../a.tif", "a/../b.tif", "a/b/..", "imagery/../../etc/passwd.tif", ".."])
def test_dotdot_segment(key):
    reason = reject_reason(f"{key},1", line=4)
    assert "'..' path segment" in reason


@pytest.mark.parametrize("key", ["a..b.tif", "a/..b.tif", "a../b.tif", "a/.../b.tif"])
def test_dots_that_are_not_a_dotdot_segment_are_fine(key):
    assert [e.key for e in parse(f"{key},1\n").entries] == [key]


def test_backslash():
    reason = reject_reason("a\\..\\b.tif,1", line=2)
    assert "backslash" in reason


@pytest.mark.parametrize(
    "char,label",
    [("\t", "U+0009 tab"), ("\x00", "U+0000 NUL"), ("\x7f", "U+007F DEL"), ("\x01", "U+0001"), ("\x1f", "U+001F")],
)
def test_control_characters(char, label):
    reason = reject_reason(f'"a{char}b.tif",1', line=2)
    assert f"control character ({label})" in reason and "position 2" in reason


def test_quoted_line_break_in_key_rejected_with_start_line():
    m = parse('a.tif,1\n"multi\nline.tif",2\nc.tif,3\n')
    assert [(e.line, e.key) for e in m.entries] == [(1, "a.tif"), (4, "c.tif")]
    [r] = m.rejected
    assert r.line == 2 and r.key == "multi\nline.tif"
    assert "line break" in r.reason and r.reason.startswith("line 2: ")


def test_unterminated_quote_swallows_rest_but_nothing_is_lost():
    m = parse('a.tif,1\n"b.tif,2\nc.tif,3\n')
    assert [e.key for e in m.entries] == ["a.tif"]
    [r] = m.rejected
    assert r.line == 2 and "quoting" in r.reason
    assert "c.tif,3" in r.raw[0]


def test_key_length_limit_in_utf8_bytes():
    ok = "a" * 1020 + ".tif"  # exactly 1024 bytes
    assert parse(f"{ok},1\n").entries[0].key == ok
    long = "a" * 1021 + ".tif"
    assert "key is 1025 bytes in UTF-8, longer than the 1024-byte limit" in reject_reason(f"{long},1", line=2)
    multibyte = "é" * 511 + ".tif"  # 1026 bytes, 515 characters
    assert "key is 1026 bytes" in reject_reason(f"{multibyte},1", line=2)


def test_custom_max_key_bytes():
    assert "longer than the 8-byte limit" in reject_reason("abcde.tif,1", line=1, max_key_bytes=8)
    assert parse("abcd.tif,1\n", max_key_bytes=8).entries[0].key == "abcd.tif"


# --- band rules ----------------------------------------------------------------------------------


def test_missing_band_column():
    reason = reject_reason("imagery/nobands.tif", line=5)
    assert reason == "line 5: missing band count (1 column, expected 2: key,bands)"


@pytest.mark.parametrize("bands", ["3.0", "x", "three", "1e3", "3 4", "0x3", "٣", "1_000", "--3"])
def test_band_not_integer(bands):
    r = only_rejected(f"b.tif,{bands}\n")
    assert r.reason.startswith("line 1: band count") and "is not an integer" in r.reason
    assert repr(bands) in r.reason
    assert r.bands_text == bands


def test_band_empty():
    reason = reject_reason("a.tif,", line=2)
    assert reason == "line 2: band count is empty (expected a positive integer such as 3)"
    reason = reject_reason('a.tif,"  "', line=3)
    assert "band count is empty" in reason


@pytest.mark.parametrize("bands", ["0", "-1", "-0", "000", "-99999999999999999999"])
def test_band_zero_or_negative(bands):
    reason = reject_reason(f"a.tif,{bands}", line=2)
    assert "band count must be a positive integer" in reason and repr(bands) in reason


@pytest.mark.parametrize("bands", ["10001", "99999", "1" + "0" * 5000])
def test_band_absurdly_large(bands):
    reason = reject_reason(f"a.tif,{bands}", line=2)
    assert "implausibly large (at most 10000)" in reason
    assert len(reason) < 300  # the value is shortened in the reason


# --- columns, duplicates, combined problems ---------------------------------------------------------


def test_extra_columns():
    r = only_rejected("x.tif,3,oops\n")
    assert r.reason.startswith("line 1: 3 columns, expected 2 (key,bands)")
    assert (r.key, r.bands_text, r.raw) == ("x.tif", "3", ["x.tif", "3", "oops"])


def test_unquoted_comma_in_key_hints_at_quoting():
    reason = reject_reason("a,b.tif,3", line=2)
    assert reason.startswith("line 2: 3 columns, expected 2 (key,bands)") and "double quotes" in reason


def test_trailing_comma_hint():
    reason = reject_reason("a.tif,3,,", line=2)
    assert reason.startswith("line 2: 4 columns, expected 2 (key,bands)") and "trailing comma" in reason


def test_duplicate_first_accepted_later_rejected():
    m = parse("a.tif,3\nb.tif,1\na.tif,3\na.tif,4\n")
    assert [(e.line, e.key) for e in m.entries] == [(1, "a.tif"), (2, "b.tif")]
    assert [r.reason.split(" (")[0] for r in m.rejected] == [
        "line 3: duplicate of line 1",
        "line 4: duplicate of line 1",
    ]


def test_duplicate_compares_keys_exactly():
    m = parse("a.tif,3\n a.tif,3\nA.tif,3\n")
    assert [e.key for e in m.entries] == ["a.tif", " a.tif", "A.tif"]


def test_rejected_first_occurrence_does_not_block_a_corrected_row():
    # Only accepted rows claim a key: a broken row followed by its corrected version processes the latter.
    m = parse("a.tif,x\na.tif,3\na.tif,3\n")
    assert [e.line for e in m.entries] == [2]
    assert [r.line for r in m.rejected] == [1, 3]
    assert "not an integer" in m.rejected[0].reason
    assert m.rejected[1].reason.startswith("line 3: duplicate of line 2")


def test_several_problems_named_in_one_reason():
    reason = reject_reason("/a.png,x", line=2)
    assert "starts with '/'" in reason and "does not end in '.tif'" in reason and "not an integer" in reason


def test_rejected_keeps_fields_as_written():
    r = only_rejected("/a b.tif, 3 \n")
    assert (r.key, r.bands_text, r.raw) == ("/a b.tif", " 3 ", ["/a b.tif", " 3 "])


# --- no row lost -------------------------------------------------------------------------------------

MESSY = (
    "\ufeffkey,bands\r\n"
    "imagery/rgb.tif,3\r\n"
    "imagery/county scans/shade é.tif,1\r\n"
    "\r\n"
    '"imagery/a,b.tif",2\r\n'
    "/imagery/rgb.tif,3\r\n"
    "imagery/rgb.png,3\r\n"
    "imagery/nobands.tif\r\n"
    "imagery/x.tif,three\r\n"
    "imagery/zero.tif,0\r\n"
    "imagery/extra.tif,3,oops\r\n"
    "imagery/rgb.tif,3\r\n"
    "   \r\n"
    "imagery/../../etc/passwd.tif,1\r\n"
    "imagery/UPPER.TIF,1\r\n"
    "imagery\\win.tif,1\r\n"
    '"imagery/tab\there.tif",1\r\n'
    ",5\r\n"
    "key,bands\r\n"
    "imagery/big.tif,20000\r\n"
    "imagery/float.tif,3.0\r\n"
    "imagery/ok2.tif, 4\r\n"
)


def test_every_data_line_appears_exactly_once():
    m = parse(MESSY)
    physical = MESSY.lstrip("\ufeff").split("\r\n")[:-1]
    expected_lines = {i for i, text in enumerate(physical, start=1) if text.strip() and i != 1}
    seen = [e.line for e in m.entries] + [r.line for r in m.rejected]
    assert sorted(seen) == sorted(expected_lines)
    assert len(seen) == len(set(seen)) == m.rows_total()
    assert [e.key for e in m.entries] == [
        "imagery/rgb.tif",
        "imagery/county scans/shade é.tif",
        "imagery/a,b.tif",
        "imagery/UPPER.TIF",
        "imagery/ok2.tif",
    ]
    assert m.notes == ["UTF-8 BOM removed", "line 1: header row skipped", "2 blank lines skipped"]
    # Each physical line's first field is the key recorded for it.
    by_line = {e.line: e.key for e in m.entries} | {r.line: r.key for r in m.rejected}
    for line in expected_lines:
        first = next(csv.reader([physical[line - 1]]))[0]
        assert by_line[line] == first, line
    # Every rejection is specific and names its own line.
    for r in m.rejected:
        assert r.reason.startswith(f"line {r.line}: ") and len(r.reason) > len(f"line {r.line}: ") + 5


# --- size and speed (correctness only; no timing asserts) ---------------------------------------------


def test_ten_megabyte_key_line():
    key = "a/" + "x" * 10_000_000 + ".tif"
    m = parse(f"ok.tif,1\n{key},3\nok2.tif,2\n")
    assert [e.key for e in m.entries] == ["ok.tif", "ok2.tif"]
    [r] = m.rejected
    assert r.line == 2 and r.key == key and "longer than the 1024-byte limit" in r.reason
    assert len(r.reason) < 300


def test_ten_megabyte_key_accepted_when_limit_allows():
    key = "a/" + "x" * 10_000_000 + ".tif"
    m = parse(f"{key},3\n", max_key_bytes=20_000_000)
    assert m.entries == [Entry(1, key, 3, "3")]


def test_ten_megabyte_band_field():
    m = parse("a.tif," + "y" * 10_000_000 + "\n")
    [r] = m.rejected
    assert "not an integer" in r.reason and len(r.reason) < 300


def test_hundred_thousand_rows():
    n = 100_000
    text = "".join(f"folder/sub dir/image_{i:06d}.tif,{i % 4 + 1}\r\n" for i in range(n))
    m = parse(text)
    assert len(m.entries) == n and m.rejected == [] and m.notes == []
    assert m.entries[-1] == Entry(n, f"folder/sub dir/image_{n - 1:06d}.tif", 4, "4")


def test_field_size_limit_is_at_least_64_mib_after_parsing():
    parse("a.tif,1\n")
    assert csv.field_size_limit() >= 64 * 1024 * 1024


# --- writing back ------------------------------------------------------------------------------------

ROUND_TRIP_KEYS = [
    "plain/a.tif",
    "with,comma.tif",
    'with "quotes".tif',
    "with space/and more.tif",
    " leading and trailing space .tif",
    "shade é/日本.tif",
    '"starts with quote.tif',
    "line\u2028sep.tif",
]


def test_write_rows_csv_round_trip():
    entries = [Entry(i, key, i, str(i)) for i, key in enumerate(ROUND_TRIP_KEYS, start=1)]
    data = write_rows_csv((e.key, e.bands_text) for e in entries)
    assert parse_manifest(data).entries == entries
    assert data.endswith(b"\n") and b"\r" not in data


def test_write_rows_csv_keeps_band_text_as_written():
    data = write_rows_csv([("a.tif", " 3 "), ("b.tif", "007")])
    m = parse_manifest(data)
    assert [(e.bands_text, e.bands) for e in m.entries] == [(" 3 ", 3), ("007", 7)]


def test_rejected_rows_written_back_keep_their_line_count():
    m = parse(MESSY)
    rows = [(r.key, r.bands_text) for r in m.rejected]
    again = parse_manifest(write_rows_csv(rows))
    assert again.rows_total() == len(rows)  # no rejected row vanishes (or turns into a header) when re-read
    by_line = sorted(
        [(e.line, e.key, e.bands_text) for e in again.entries] + [(r.line, r.key, r.bands_text) for r in again.rejected]
    )
    assert [(key, bands) for _, key, bands in by_line] == rows


def test_write_rows_csv_exact_bytes():
    assert write_rows_csv([("a.tif", "3"), ("b,c.tif", "1"), ('d"e.tif', "2")]) == (
        b'a.tif,3\n"b,c.tif",1\n"d""e.tif",2\n'
    )
    assert write_rows_csv([]) == b""


def test_write_rows_csv_replaces_unencodable_characters():
    data = write_rows_csv([("bad\udcff.tif", "1")])
    assert data == "bad\ufffd.tif,1\n".encode("utf-8")


def test_write_errors_csv():
    data = write_errors_csv([("a,b.tif", "3", "line 2: x, y"), ("é.tif", "", "line 3: band count is empty")])
    assert data.decode("utf-8").split("\n")[0] == "key,bands,reason"
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows == [
        ["key", "bands", "reason"],
        ["a,b.tif", "3", "line 2: x, y"],
        ["é.tif", "", "line 3: band count is empty"],
    ]
    assert write_errors_csv([]) == b"key,bands,reason\n"


# --- jpeg_key, batch_slices --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,expected",
    [
        ("a/b.tif", "a/b.jpg"),
        ("b.tif", "b.jpg"),
        ("a.tif/b.tif", "a.tif/b.jpg"),
        ("x.tif.tif", "x.tif.jpg"),
        ("sp ace/é.tif", "sp ace/é.jpg"),
    ],
)
def test_jpeg_key(key, expected):
    assert jpeg_key(key) == expected


def test_jpeg_key_rejects_non_tif():
    with pytest.raises(ValueError):
        jpeg_key("a.png")


@pytest.mark.parametrize(
    "n,size,expected",
    [
        (0, 5, []),
        (1, 5, [(0, 1)]),
        (1, 1, [(0, 1)]),
        (5, 5, [(0, 5)]),
        (10, 5, [(0, 5), (5, 10)]),
        (11, 5, [(0, 5), (5, 10), (10, 11)]),
        (4, 5, [(0, 4)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_batch_slices(n, size, expected):
    assert batch_slices(n, size) == expected


def test_batch_slices_cover_everything_once():
    for n in range(0, 40):
        for size in range(1, 12):
            slices = batch_slices(n, size)
            covered = [i for start, stop in slices for i in range(start, stop)]
            assert covered == list(range(n))
            assert all(0 < stop - start <= size for start, stop in slices)
            assert slices == batch_slices(n, size)


@pytest.mark.parametrize("n,size", [(5, 0), (5, -1), (-1, 5)])
def test_batch_slices_bad_arguments(n, size):
    with pytest.raises(ValueError):
        batch_slices(n, size)
