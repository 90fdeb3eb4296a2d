"""The run report: content, escaping, and what a real headless browser shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from cog_pipeline.report import render_html
from cog_pipeline.tick import TickOptions, tick
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects

DOCS_IMG = os.environ.get("COG_PIPELINE_REPORT_SCREENSHOT")  # set to write the README's picture


def run_mixed(seed, settings, samples, tmp_path):
    seed.upload_file(str(samples / "RGB.byte.tif"), INPUT_BUCKET, "imagery/rgb.tif")
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/<b>bold</b>.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set-raw.csv",
                    Body=b"imagery/rgb.tif,3\nimagery/<b>bold</b>.tif,1\nimagery/missing.tif,1\n/bad.tif,1\n")
    return tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings,
                            workdir=tmp_path / "work"))


def test_report_is_written_uploaded_and_escaped(seed, buckets, settings, samples, tmp_path):
    result = run_mixed(seed, settings, samples, tmp_path)
    page = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r'id="processed-count">2<', page) and re.search(r'id="failed-count">2<', page)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count("data:image/jpeg;base64,") == 2  # one thumbnail per converted image
    assert page.index("missing.tif") < page.index("imagery/rgb.tif"), "failed rows come first"
    reports = [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("set-report-") and k.endswith(".html")]
    assert len(reports) == 1 and all_objects(seed, INPUT_BUCKET)[reports[0]].decode() == page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if not found:
        print("SKIPPED browser test: chromium is not installed and could not be installed with apt-get")
        pytest.skip("chromium is not installed and could not be installed with apt-get")
    return found


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_in_a_real_browser(seed, buckets, settings, samples, tmp_path):
    browser = _chromium()
    result = run_mixed(seed, settings, samples, tmp_path)
    url = (result.run_dir / "report.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "chrome-profile")]

    dom = _headless(browser, *profile, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'id="processed-count">2<', dom.stdout) and re.search(r'id="failed-count">2<', dom.stdout)
    assert dom.stdout.count("<img") == 2
    console_errors = [l for l in dom.stderr.splitlines() if "CONSOLE" in l and "ERROR" in l.upper()]
    assert not console_errors, console_errors

    shot = tmp_path / "report.png"
    _headless(browser, *profile, "--window-size=1280,720", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000
    if DOCS_IMG:
        shutil.copy(shot, DOCS_IMG)
