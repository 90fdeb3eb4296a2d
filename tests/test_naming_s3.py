"""Key naming rules and S3 settings (endpoint, key files) without running a workflow."""

from __future__ import annotations

import logging

import pytest

from cog_pipeline.storage import s3
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import (
    ManifestKeys,
    claim_marker_key,
    is_pipeline_object,
    is_tiff_key,
    jpeg_key,
    key_stem,
    manifest_stem,
    tiff_suffix,
)


@pytest.mark.parametrize(
    "raw,stem",
    [
        ("X-raw.csv", "X-"),
        ("folder/sub/county-raw.csv", "folder/sub/county-"),
        ("folder/plain.csv", "folder/plain-"),
        ("rawdata/raw.csv", "rawdata/"),
    ],
)
def test_manifest_stem(raw, stem):
    assert manifest_stem(raw) == stem


@pytest.mark.parametrize(
    "key,suffix,stem,jpeg",
    [
        ("a/b.tif", ".tif", "a/b", "a/b.jpg"),
        ("a/b.TIF", ".TIF", "a/b", "a/b.jpg"),
        ("a/b.tiff", ".tiff", "a/b", "a/b.jpg"),
        ("a/b.TiFf", ".TiFf", "a/b", "a/b.jpg"),
        ("a.tif/b.tif", ".tif", "a.tif/b", "a.tif/b.jpg"),
    ],
)
def test_the_tiff_key_rule(key, suffix, stem, jpeg):
    """The original's '.tif' rule, extended to '.tiff' and any case: one place decides it."""
    assert (tiff_suffix(key), key_stem(key), jpeg_key(key), is_tiff_key(key)) == (suffix, stem, jpeg, True)


@pytest.mark.parametrize("key", ["a/b.jpg", "a/b.tif.bak", "a/b.tifff", "tif", "a/b", "a.tif/b", "a/b.ti"])
def test_keys_that_are_not_geotiffs(key):
    assert tiff_suffix(key) is None and not is_tiff_key(key) and key_stem(key) == key
    with pytest.raises(ValueError, match=r"does not end in '\.tif' or '\.tiff'"):
        jpeg_key(key)


def test_the_tiff_key_rule_lives_only_in_core_naming():
    """Every module asks core.naming (tiff_suffix, key_stem, jpeg_key) instead of spelling '.tif' itself."""
    import re
    from pathlib import Path

    import cog_pipeline

    root = Path(cog_pipeline.__file__).parent
    spelled = re.compile(r"""(endswith|removesuffix|rstrip|len)\(\s*\(?["']\.tif""")
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        if path.relative_to(root).as_posix() != "core/naming.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert not found, found


def test_manifest_keys_stay_in_the_same_folder():
    keys = ManifestKeys.for_raw("a/b/X-raw.csv", "20261125-063000")
    assert keys.processing == "a/b/X-processing-20261125-063000.csv"
    assert keys.processed == "a/b/X-processed-20261125-063000.csv"
    assert keys.failed == "a/b/X-failed-20261125-063000.csv"
    assert keys.errors == "a/b/X-errors-20261125-063000.csv"


@pytest.mark.parametrize(
    "key,owned",
    [
        ("X-processing-20261125-063000.csv", True),
        ("a/X-processed-20261125-063000.csv", True),
        ("X-failed-20261125-063000.csv", True),
        ("X-errors-20261125-063000.csv", True),
        ("X-report-20261125-063000.html", True),
        (claim_marker_key("X-raw.csv", '"abc"'), True),
        ("X-raw.csv", False),
        ("failed-images-raw.csv", False),
        ("X-failed-2026.csv", False),
    ],
)
def test_pipeline_objects_are_recognised(key, owned):
    assert is_pipeline_object(key) is owned


@pytest.mark.parametrize(
    "given,url",
    [
        ("s3.example.org", "https://s3.example.org"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("https://s3.example.org", "https://s3.example.org"),
        (None, None),
    ],
)
def test_endpoint_normalisation(given, url):
    assert s3.normalize_endpoint(given) == url


def test_key_file_readable_by_others_warns(tmp_path, caplog):
    path = tmp_path / "k"
    path.write_text("value\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert s3.read_key_file(str(path)) == "value"
    assert "readable by other users" in caplog.text and "value" not in caplog.text


def test_key_file_problems_are_clear_and_secret_free(tmp_path):
    with pytest.raises(PipelineError, match="key file not found"):
        s3.read_key_file(str(tmp_path / "absent"))
    two = tmp_path / "two"
    two.write_text("SENTINEL-ONE\nSENTINEL-TWO\n")
    two.chmod(0o600)
    with pytest.raises(PipelineError) as err:
        s3.read_key_file(str(two))
    assert "SENTINEL" not in str(err.value)


def test_transferred_key_file_is_found_in_the_job_directory(tmp_path, monkeypatch):
    (tmp_path / "access").write_text("v\n")
    monkeypatch.chdir(tmp_path)
    assert s3.read_key_file("/submit/side/path/access") == "v"


def test_one_key_file_without_the_other_is_refused(tmp_path):
    path = tmp_path / "k"
    path.write_text("v\n")
    with pytest.raises(PipelineError, match="both"):
        s3.make_client(s3.S3Settings(access_key_file=str(path)))


def test_clients_share_one_session_but_each_signs_with_its_own_keys(tmp_path):
    """make_client reuses the process's boto3 session (its service model loaded once), never its credentials."""
    settings = []
    for name in ("one", "two"):
        (tmp_path / f"{name}-access").write_text(f"AKIA{name.upper()}\n")
        (tmp_path / f"{name}-secret").write_text(f"secret-{name}\n")
        settings.append(
            s3.S3Settings(
                endpoint_url="http://127.0.0.1:9",
                access_key_file=str(tmp_path / f"{name}-access"),
                secret_key_file=str(tmp_path / f"{name}-secret"),
            )
        )
    first, second = (s3.make_client(s) for s in settings)
    keys = [c._request_signer._credentials.get_frozen_credentials() for c in (first, second)]
    assert [(k.access_key, k.secret_key) for k in keys] == [("AKIAONE", "secret-one"), ("AKIATWO", "secret-two")]
    description = [c.meta.service_model._service_description for c in (first, second)]
    assert description[0] is description[1], "the S3 service model is loaded once per process"
