"""The run report (content, escaping, thumbnails from the COG's overviews) and the per-image logs."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from cog_pipeline.raster.convert import convert_file
from cog_pipeline.work.imagelogs import advice, capture, log_name
from cog_pipeline.work.report import CSP
from cog_pipeline.raster.thumbnail import _overview_level, thumbnail_array
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from inprocess import claim_and_run, tick_options


def run_mixed(seed, settings, samples, tmp_path):
    """A run (driven in-process) of two convertible images, one with a key to escape and a wrong band count,
    a missing input and a bad row; its run directory."""
    seed.upload_file(str(samples / "RGB.byte.tif"), INPUT_BUCKET, "imagery/rgb.tif")
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/<b>bold</b>.tif")
    seed.put_object(
        Bucket=INPUT_BUCKET,
        Key="set-raw.csv",
        Body=b"imagery/rgb.tif,3\nimagery/<b>bold</b>.tif,2\nimagery/missing.tif,1\n/bad.tif,1\n",
    )
    run, [summary] = claim_and_run(tick_options(settings, tmp_path / "work"))
    assert (summary["processed"], summary["failed"]) == (2, 2)
    return run.path


def test_report_is_written_uploaded_and_escaped(seed, buckets, settings, samples, tmp_path):
    run_dir = run_mixed(seed, settings, samples, tmp_path)
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r'id="total-count">4<', page)
    assert re.search(r'id="processed-count">2<', page) and re.search(r'id="failed-count">2<', page)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert f'content="{CSP}"' in page and page.count("<script") == 1 and "http://" not in page  # the map's own
    assert page.count('<path class="fp processed"') == 2, "both converted images are on the map"
    assert "EPSG:32618" in page and "EPSG:26711" in page and "COG / input size" in page
    assert page.count('src="data:image/jpeg;base64,') == 2  # one thumbnail per converted image
    table = page[page.index("<tbody>") :]
    assert table.index("missing.tif") < table.index("imagery/rgb.tif"), "failed rows come first"
    assert "What to do:" in page and "cog-pipeline retry" in page and "set-failed-" in page
    assert "manifest says 2 bands, file has 1" in page  # the band-count note of a processed row
    reports = [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("set-report-") and k.endswith(".html")]
    assert len(reports) == 1 and all_objects(seed, INPUT_BUCKET)[reports[0]].decode() == page


def test_every_row_gets_a_log_named_after_its_image(seed, buckets, settings, samples, tmp_path):
    run_dir = run_mixed(seed, settings, samples, tmp_path)
    logs = run_dir / "logs" / "images"
    assert sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*.log")) == [
        "bad.log",
        "imagery/<b>bold</b>.log",
        "imagery/missing.log",
        "imagery/rgb.log",
    ]

    missing = (logs / "imagery" / "missing.log").read_text()
    assert "image:      imagery/missing.tif" in missing and "line 3" in missing
    assert "FAILED at step 'download'" in missing and "input object not found" in missing
    assert "what to do: upload the image" in missing and "batch log:  logs/convert/m1/batch-00000.log" in missing
    bad = (logs / "bad.log").read_text()
    assert "FAILED at step 'manifest row'" in bad and "fix the row" in bad
    ok = (logs / "imagery" / "rgb.log").read_text()
    assert "outcome:    processed" in ok and "791x718 px, 3 band(s) uint8" in ok
    assert f"s3://{OUTPUT_BUCKET}/imagery/rgb.tif" in ok and "validate" in ok
    assert "logs/<wbr>images/<wbr>imagery/<wbr>missing.log" in (run_dir / "report.html").read_text()


def test_a_run_of_two_manifests_logs_every_row_of_both(seed, buckets, settings, samples, tmp_path):
    """Each manifest's aggregate writes its own rows' logs: after the run the first manifest's are there, a
    key listed in both has both sections, and the second aggregate did not write the first's again."""
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/byte.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="a-raw.csv", Body=b"imagery/byte.tif,1\nimagery/only-a.tif,1\n")
    seed.put_object(Bucket=INPUT_BUCKET, Key="b-raw.csv", Body=b"imagery/byte.tif,1\nimagery/only-b.tif,1\n")
    run, summaries = claim_and_run(tick_options(settings, tmp_path / "work"))
    assert sorted((s["raw_key"], s["processed"], s["failed"]) for s in summaries) == [
        ("a-raw.csv", 1, 1),
        ("b-raw.csv", 1, 1),
    ]
    logs = run.path / "logs" / "images" / "imagery"
    assert sorted(p.name for p in logs.glob("*.log")) == ["byte.log", "only-a.log", "only-b.log"]
    assert "input object not found" in (logs / "only-a.log").read_text()
    assert "input object not found" in (logs / "only-b.log").read_text()
    byte_log = (logs / "byte.log").read_text()
    assert byte_log.count("image:      imagery/byte.tif") == 2 and "a-raw.csv" in byte_log and "b-raw.csv" in byte_log
    # A log written again after its manifest's aggregate ended (by the other manifest's aggregate, or by the
    # driver's combined report) would be newer than that manifest's final outcome/<m>.json.
    for summary in summaries:
        ended = (run.path / "outcome" / f"{summary['manifest']}.json").stat().st_mtime_ns
        own_log = logs / f"only-{summary['raw_key'][0]}.log"
        assert own_log.stat().st_mtime_ns <= ended, f"{own_log.name} written after {summary['raw_key']} ended"


def test_log_names_stay_inside_the_log_directory():
    assert log_name("a/b/tile_001.tif") == "a/b/tile_001.log"
    assert log_name("/lead.tif") == "lead.log"
    assert log_name("../../etc/passwd") == "etc/passwd.log"
    assert log_name("a//./b\x00c.tif") == "a/b_c.log"
    assert log_name("..") == "_.log"
    long = log_name("x" * 600 + ".tif")
    assert len(long.encode()) < 200 and long.endswith(".log")


def test_captured_lines_go_into_the_record_and_are_bounded():
    record: dict = {}
    with capture(record):
        logging.getLogger("cog_pipeline.test").warning("GDAL said something about %s", "tile.tif")
    assert len(record["log"]) == 1
    assert "WARNING cog_pipeline.test: GDAL said something about tile.tif" in record["log"][0]
    quiet: dict = {}
    with capture(quiet):
        pass
    assert "log" not in quiet
    many: dict = {}
    with capture(many):
        for i in range(250):
            logging.getLogger("cog_pipeline.test").warning("line %d", i)
    assert len(many["log"]) == 201 and many["log"][-1] == "... 50 more line(s) in the batch log"


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("download: input object not found in bucket 'in'; upload it", "upload the image"),
        ("open: not a TIFF file (it looks like a PNG image)", "export the image as GeoTIFF"),
        ("open: file is truncated or corrupt: only 9 bytes", "upload the file again"),
        ("cog: TIFFWrite failed; most likely no space left on the device", "temp disk is full"),
        ("no outcome recorded: the conversion job for this row did not finish", "mem_mb_per_job"),
        ("line 4: band count 'x' is not an integer", "fix the row"),
        ("upload: PutObject failed: AccessDenied", "S3 keys may not"),
        ("verify: band 1 differs", "report it"),
        ("something new", "see this image's log"),
    ],
)
def test_every_failure_says_what_to_do(reason, expected):
    from cog_pipeline.work.outcomes import legacy_code

    assert expected in advice(legacy_code(reason))  # advice is keyed by failure code (reasons of old records: mapped)


def write_cog(tmp_path, name, data, **profile):
    src = tmp_path / f"{name}.tif"
    bands, height, width = data.shape
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=data.dtype,
        crs="EPSG:32616",
        transform=from_origin(0, 0, 1, 1),
        tiled=True,
        **profile,
    ) as dst:
        dst.write(data)
        return src, dst


def test_thumbnails_are_read_from_the_smallest_sufficient_overview(tmp_path):
    y, x = np.mgrid[0:2048, 0:2048]
    data = np.stack([(x * 30).astype("uint16"), (y * 30).astype("uint16"), ((x + y) * 15).astype("uint16")])
    src, _ = write_cog(tmp_path, "u16", data)
    cog = tmp_path / "u16.cog.tif"
    convert_file(src, cog, tmp_path / "u16.jpg")
    with rasterio.open(cog) as ds:
        factors = ds.overviews(1)
    level = _overview_level(cog, 128)
    sizes = [2048 // f for f in factors]
    assert level is not None and sizes[level] >= 128 and all(size < 128 for size in sizes[level + 1 :]), sizes
    thumb = thumbnail_array(cog)
    assert thumb.shape == (3, 128, 128) and thumb.dtype == np.uint8
    assert thumb.min() <= 5 and thumb.max() >= 250, "16-bit data is stretched like the preview"
    assert thumb[0, :, -1].mean() > thumb[0, :, 0].mean(), "band 1 grows to the east"


def test_thumbnails_follow_the_preview_rules_for_palettes_and_masks(tmp_path):
    classes = np.zeros((1, 64, 64), dtype="uint8")
    classes[0, :, 32:] = 1
    src = tmp_path / "pal.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(0, 0, 1, 1),
        nodata=None,
    ) as dst:
        dst.write(classes)
        dst.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
    thumb = thumbnail_array(src)
    assert thumb.shape == (3, 64, 64)
    assert tuple(thumb[:, 0, 0]) == (255, 0, 0) and tuple(thumb[:, 0, 63]) == (0, 0, 255)

    values = np.full((1, 64, 64), 200, dtype="uint8")
    values[0, :8, :8] = 7
    nodata_src, _ = write_cog(tmp_path, "nodata", values, nodata=7)
    thumb = thumbnail_array(nodata_src)
    assert thumb[0, 0, 0] == 0 and thumb[0, 40, 40] == 200


def hand_made_run(tmp_path):
    """A finished run directory written by hand: one processed key, a duplicate row of it and a missing image."""
    import json

    import yaml

    from cog_pipeline.raster.thumbnail import DATA_URI_PREFIX

    run = tmp_path / "workflow-run-20261201-101010"
    (run / "manifests").mkdir(parents=True)
    (run / "manifests" / "m1.csv").write_text("key,bands\nfolder/deep/a.tif,1\nfolder/deep/a.tif,1\nlost.tif,1\n")
    (run / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "run_id": "20261201-101010",
                "s3": {"input_bucket": "in", "output_bucket": "out"},
                "manifests": [
                    {
                        "id": "m1",
                        "csv": "manifests/m1.csv",
                        "raw_key": "set-raw.csv",
                        "stem": "set-",
                        "timestamp": "20261201-101010",
                    }
                ],
            }
        )
    )
    thumb = DATA_URI_PREFIX + "AAAA"
    (run / "status" / "m1").mkdir(parents=True)
    (run / "status" / "m1" / "batch-00000.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "key": "folder/deep/a.tif",
                    "line": 2,
                    "bands": "1",
                    "status": "ok",
                    "width": 640,
                    "height": 480,
                    "input_bytes": 4000,
                    "cog_bytes": 2000,
                    "seconds": 7.5,
                    "thumbnail": thumb,
                    "notes": [],
                },
                {
                    "key": "lost.tif",
                    "line": 4,
                    "bands": "1",
                    "status": "failed",
                    "step": "download",
                    "reason": "input object not found",
                    "seconds": 0.25,
                },
            ]
        )
        + "\n"
    )
    (run / "outcome" / "m1").mkdir(parents=True)
    (run / "outcome" / "m1" / "set-processed-20261201-101010.csv").write_text("folder/deep/a.tif,1\n")
    (run / "outcome" / "m1" / "set-failed-20261201-101010.csv").write_text("folder/deep/a.tif,1\nlost.tif,1\n")
    (run / "outcome" / "m1" / "set-errors-20261201-101010.csv").write_text(
        "key,bands,reason\nfolder/deep/a.tif,1,line 3: duplicate of line 2 (each key may be listed once)\n"
        "lost.tif,1,download: input object not found\n"
    )
    (run / "outcome" / "m1.json").write_text(
        json.dumps(
            {
                "manifest": "m1",
                "raw_key": "set-raw.csv",
                "processing_key": "set-processing-20261201-101010.csv",
                "processed_key": "set-processed-20261201-101010.csv",
                "failed_key": "set-failed-20261201-101010.csv",
                "errors_key": "set-errors-20261201-101010.csv",
                "processed": 1,
                "failed": 2,
                "notes": ["line 1: header row skipped", "line 9 (x.tif): <odd> note"],
            }
        )
    )
    return run


def test_each_report_row_shows_its_own_record_notes_and_breaks_keys_at_slashes(tmp_path):
    from cog_pipeline.work.report import render_html, report_rows

    run = hand_made_run(tmp_path)
    rows = report_rows(run, yaml.safe_load((run / "run.yaml").read_text()))
    duplicate, lost, processed = rows
    assert (duplicate["outcome"], duplicate["reason"]) == (
        "failed",
        "line 3: duplicate of line 2 (each key may be listed once)",
    )
    # The duplicate was never converted: none of the processed row's thumbnail, sizes or seconds.
    assert not {"thumbnail", "width", "input_bytes", "cog_bytes", "seconds"} & set(duplicate)
    assert lost["seconds"] == 0.25 and processed["seconds"] == 7.5 and processed["width"] == 640
    page = render_html(run)
    assert page.count('src="data:image/jpeg;base64,') == 1
    assert "Manifest notes (2)" in page and "line 1: header row skipped" in page
    assert "&lt;odd&gt; note" in page and "<odd>" not in page
    assert '<span class="key">folder/<wbr>deep/<wbr>a.tif</span>' in page
    assert "<code>logs/<wbr>images/<wbr>folder/<wbr>deep/<wbr>a.log</code>" in page
    assert "overflow-wrap: anywhere" not in page  # breaks inside a name only when one name is wider than the column


def test_outcome_csvs_with_megabyte_fields_are_read_in_a_fresh_process(tmp_path):
    """A 10 MB manifest line comes back as a megabyte-long failed key: the report, status and retry read
    such CSVs without csv's 128 KB field limit (a fresh interpreter: the manifest parser has not raised it)."""
    import subprocess
    import sys

    path = tmp_path / "m-errors.csv"
    path.write_text("key,bands,reason\n" + "k" * 300_000 + ",1,line 1: key too long\n", encoding="utf-8")
    code = (
        "import sys; from pathlib import Path; from cog_pipeline.work.report import _csv_rows; "
        "rows = _csv_rows(Path(sys.argv[1])); print(len(rows), len(rows[1][0]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "300000"]


HOSTILE = "x/<script>alert(1)</script>.tif"


def with_qa_verdict(run):
    """``hand_made_run`` plus a QA step: a QA-failed row, a processed row with a hostile key and the verdict."""
    import json

    from cog_pipeline.raster.qa import Finding
    from cog_pipeline.core.naming import qa_verdict_path
    from cog_pipeline.work.qa_step import QaVerdict

    outcome = run / "outcome" / "m1"
    with (outcome / "set-processed-20261201-101010.csv").open("a") as f:
        f.write(f"{HOSTILE},3\n")
    with (outcome / "set-errors-20261201-101010.csv").open("a") as f:
        f.write('utm.tif,3,"qa: srs_mismatch: SRS EPSG:32760, while 3 of 4 images are EPSG:2193"\n')
    verdict = QaVerdict(
        "m1",
        4,
        (
            Finding("folder/deep/a.tif", "paletted", "info", "paletted (7 colours): overviews by nearest/mode"),
            Finding("utm.tif", "srs_mismatch", "fail", "SRS EPSG:32760, while 3 of 4 images are EPSG:2193"),
            Finding("utm.tif", "colorinterp_mismatch", "warn", "colour interpretation gray"),
            Finding(HOSTILE, "undeclared_fill", "warn", 'value -9999 runs along the <left> edge & "more"'),
        ),
        missing=("lost.tif",),
    )
    path = qa_verdict_path(run, "m1")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(verdict.to_dict()), encoding="utf-8")
    return run


def table_rows(page: str) -> dict[str, str]:
    """The report table's rows by their key cell's text (the later of two rows with one key)."""
    rows = re.findall(r'<tr id="row-\d+".*?</tr>', page, re.S)
    return {re.search(r'<span class="key">(.*?)</span>', r).group(1).replace("<wbr>", ""): r for r in rows} | {
        "_all": "\n".join(rows)
    }


def test_the_report_shows_the_qa_summary_and_each_rows_warnings_escaped(tmp_path):
    from cog_pipeline.work.report import render_html

    page = render_html(with_qa_verdict(hand_made_run(tmp_path)))
    section = page[page.index('<section class="qa-section"') : page.index("</section>")]
    assert (
        "set-raw.csv: 4 headers read, 1 row failed by QA (not converted), 1 input not in the bucket &middot; "
        "findings: fail 1 (srs_mismatch 1); warn 2 (colorinterp_mismatch 1, undeclared_fill 1); info 1 (paletted 1) "
        "&middot; all findings in <code>set-qa-20261201-101010.csv</code> in the input bucket"
    ) in section
    assert page.count("<script") == 1 and "<left>" not in page, "keys and details are escaped"
    rows = table_rows(page)
    hostile = rows["x/&lt;script&gt;alert(1)&lt;/script&gt;.tif"]
    assert (
        '<div class="qa qa-warn"><b>QA warn: undeclared_fill</b> <span class="qa-detail">value -9999 runs along '
        "the &lt;left&gt; edge &amp; &quot;more&quot;</span></div>"
    ) in hostile
    utm = rows["utm.tif"]
    assert "qa: srs_mismatch: SRS EPSG:32760" in utm and "QA warn: colorinterp_mismatch" in utm
    assert "QA fail" not in rows["_all"], "a failing check is the row's reason, not repeated under it"
    processed = rows["folder/deep/a.tif"]  # the later row of that key: the processed one
    assert 'class="ok"' in processed and "QA info: paletted" in processed
    assert rows["_all"].count("QA info: paletted") == 1, "the refused duplicate row gets no QA notes"


def test_each_images_log_has_its_qa_warnings_and_notes(tmp_path):
    from cog_pipeline.work.imagelogs import image_log_path, write_image_logs
    from cog_pipeline.work.report import report_rows

    run = with_qa_verdict(hand_made_run(tmp_path))
    config = yaml.safe_load((run / "run.yaml").read_text())
    write_image_logs(run, report_rows(run, config), config)
    utm = (run / image_log_path("utm.tif")).read_text()
    assert "qa:         warn colorinterp_mismatch: colour interpretation gray" in utm
    assert "reason:     qa: srs_mismatch: SRS EPSG:32760" in utm  # the failing check is the reason
    assert "qa:         info paletted: paletted (7 colours)" in (run / image_log_path("folder/deep/a.tif")).read_text()


def test_a_run_without_qa_has_no_qa_on_its_report(tmp_path, monkeypatch):
    from cog_pipeline.work import report

    real = time.gmtime
    monkeypatch.setattr(report.time, "gmtime", lambda *a: real(*a) if a else real(0))  # "report made" fixed
    run = hand_made_run(tmp_path)
    page = report.render_html(run)
    assert not re.search("qa", page, re.I), re.findall(".{0,30}qa.{0,30}", page, re.I | re.S)
    (run / "qa").mkdir()  # a QA step that wrote nothing for this manifest: still no verdict
    assert report.render_html(run) == page
    page_with_qa = report.render_html(with_qa_verdict(run))
    assert "Delivery QA" in page_with_qa and ".qa-section" in page_with_qa


@pytest.mark.slow
def test_a_tick_with_qa_puts_its_findings_on_the_report(seed, buckets, settings, tmp_path):
    from affine import Affine

    from rasters import TRANSFORM, make_tif

    rng = np.random.default_rng(0)
    for i, crs in enumerate(["EPSG:2193", "EPSG:2193", "EPSG:32760"]):
        data = rng.integers(1, 255, (3, 64, 64), dtype=np.uint8)
        path = make_tif(tmp_path / f"t{i}.tif", data, crs=crs, transform=TRANSFORM @ Affine.translation(64 * i, 0))
        seed.upload_file(str(path), INPUT_BUCKET, f"d/t{i}.tif")
    dem = np.linspace(10, 900, 64 * 64, dtype=np.float32).reshape(64, 64)
    dem[:, :16] = -9999  # an undeclared fill along the left edge: a warning
    seed.upload_file(str(make_tif(tmp_path / "dem.tif", dem)), INPUT_BUCKET, "d/<dem>.tif")
    manifest = b"d/t0.tif,3\nd/t1.tif,3\nd/t2.tif,3\nd/<dem>.tif,1\n"
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-raw.csv", Body=manifest)
    # The tick's workflow in-process: test_qa_step's presigned tick has Snakemake run the QA step.
    run, _ = claim_and_run(tick_options(settings, tmp_path / "work", run_overrides={"qa": {"enabled": True}}))
    page = (run.path / "report.html").read_text(encoding="utf-8")
    [qa_key] = [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("county-qa-")]
    assert (
        "county-raw.csv: 4 headers read, 1 row failed by QA (not converted) &middot; findings: fail 1 (srs_mismatch 1)"
        in page
    )
    assert f"<code>{qa_key}</code> in the input bucket" in page
    rows = table_rows(page)
    assert "qa: srs_mismatch: SRS EPSG:32760" in rows["d/t2.tif"] and 'class="failed"' in rows["d/t2.tif"]
    assert "QA warn: undeclared_fill" in rows["d/&lt;dem&gt;.tif"] and 'class="ok"' in rows["d/&lt;dem&gt;.tif"]
