"""The run report in a real headless browser (Debian's chromium), driven over the DevTools protocol.

The tests never install the browser (``.ci/run`` does: ``apt-get install chromium``); without it
they are skipped with the reason in the summary (pytest -ra), and fail where CI requires them.
Console messages, uncaught exceptions, failed loads and CSP violations are collected from the
protocol's events, not guessed from log text, and a control page proves the collector sees them. Set
COG_PIPELINE_REPORT_SCREENSHOT=docs/img/report.png to refresh the README's pictures (report.png, and
report-map.png beside it: the map of a county delivery).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rasterio

from cog_pipeline.ui.demo import sample_files
from cog_pipeline.work.report import render_html
from cog_pipeline.work.manifest import write_rows_csv
from cog_pipeline.control.tick import TickOptions, tick
from inprocess import workflow_in_process
from conftest import INPUT_BUCKET, OUTPUT_BUCKET

SCREENSHOT = os.environ.get("COG_PIPELINE_REPORT_SCREENSHOT")
HOSTILE_KEY = "imagery/<img src=x onerror=console.error(1)>.tif"


# ------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; never installed by the tests (.ci/run installs it). Skipped loudly without it,
    a failure where CI requires it (COG_PIPELINE_REQUIRE_BROWSER=1)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "BROWSER TESTS NOT RUN: chromium is not installed (as root: apt-get install chromium)"
    if os.environ.get("COG_PIPELINE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (COG_PIPELINE_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


class Page:
    """One headless chromium with one tab, spoken to over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, browser: str, profile: Path, width: int = 1400, height: int = 900):
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        # The protocol pipes must be the browser's fds 3 and 4: a tiny exec shim moves them there.
        remap = (
            "import os, sys; a, b = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2])); "
            "os.dup2(a, 3); os.dup2(b, 4); os.set_inheritable(3, True); os.set_inheritable(4, True); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                remap,
                str(to_browser_r),
                str(from_browser_w),
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf, self._id, self.events = b"", 0, []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the protocol pipe")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event, then for every image to be decoded (or fail)."""
        self.send("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._next(deadline)
        self.evaluate("Promise.allSettled([...document.images].map(i => i.decode()))")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, error log entries (CSP, failed loads)."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
            elif method == "Network.loadingFailed":
                found.append(f"failed load: {params.get('errorText')}")
        return found

    def screenshot(self, path: Path, max_height: int = 1400, selector: str | None = None) -> None:
        """The page (at most ``max_height`` px), or only the element ``selector`` names."""
        height = min(max_height, int(self.evaluate("document.documentElement.scrollHeight")))
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        params: dict[str, Any] = {"format": "png"}
        if selector:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect();"
                " return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()"
            )
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
        data = self.send("Page.captureScreenshot", params, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def click(self, x: float, y: float) -> None:
        """A real left click (pressed and released) at viewport point (x, y)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {
                    "type": kind,
                    "x": x,
                    "y": y,
                    "button": "left",
                    "buttons": 0 if kind == "mouseReleased" else 1,
                    "clickCount": 0 if kind == "mouseMoved" else 1,
                },
                session=True,
            )

    def click_element(self, expression: str) -> None:
        """Scroll the element ``expression`` evaluates to into view and click the middle of it."""
        x, y = self.evaluate(
            f"(() => {{ const e = {expression}; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        self.click(x, y)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may already be gone
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture
def page(chromium, tmp_path):
    opened = Page(chromium, tmp_path / "chromium-profile")
    yield opened
    opened.close()


# ------------------------------------------------------------------------------------ the tests


def test_the_problem_collector_sees_console_errors_and_broken_images(page, tmp_path):
    """Control: without this, 'no console errors' below could pass because nothing is ever collected."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><p>x</p><img src="missing.png"><script>console.error("deliberate")</script>')
    page.open(bad.as_uri())
    problems = page.problems()
    assert any("deliberate" in p for p in problems), problems
    assert any("failed load" in p for p in problems), problems


def mixed_run(seed, settings, tmp_path):
    """The demo's six sample images, a hostile key, a missing image and a bad row, through a real tick whose jobs
    run in the test's process (the report is the subject: tests/inprocess.py)."""
    (tmp_path / "inputs").mkdir()
    files = sample_files(tmp_path / "inputs")
    files[HOSTILE_KEY] = files["imagery/small/byte.tif"]
    rows = []
    for key, path in files.items():
        seed.upload_file(str(path), INPUT_BUCKET, key)
        with rasterio.open(path) as src:
            rows.append((key, str(src.count)))
    rows += [("imagery/not-uploaded-yet.tif", "3"), ("/imagery/leading-slash.tif", "3")]
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-2026-11-25-raw.csv", Body=write_rows_csv(rows))
    with workflow_in_process():
        return tick(
            TickOptions(
                input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings, workdir=tmp_path / "work"
            )
        )


@pytest.mark.slow
def test_report_in_a_real_browser(page, seed, buckets, settings, tmp_path):
    result = mixed_run(seed, settings, tmp_path)
    summary = result.manifests[0]
    assert (summary["processed"], summary["failed"]) == (7, 2)

    page.open((result.run_dir / "report.html").resolve().as_uri())
    assert page.problems() == []
    counts = page.evaluate(
        "({total: document.getElementById('total-count').textContent,"
        " processed: document.getElementById('processed-count').textContent,"
        " failed: document.getElementById('failed-count').textContent})"
    )
    assert counts == {"total": "9", "processed": "7", "failed": "2"}
    outcomes = page.evaluate("[...document.querySelectorAll('tbody tr .outcome')].map(e => e.textContent)")
    assert outcomes == ["failed"] * 2 + ["processed"] * 7, "failed rows come first"
    keys = page.evaluate("[...document.querySelectorAll('tbody .key')].map(e => e.textContent)")
    assert HOSTILE_KEY in keys, "the hostile key is shown as text"
    images = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(images) == 7 and all(0 < w <= 128 and 0 < h <= 128 for w, h in images), images
    todo = page.evaluate("[...document.querySelectorAll('tr.failed .todo')].map(e => e.textContent)")
    assert len(todo) == 2 and "upload" in todo[0].lower()
    # Every converted sample has a CRS: 7 footprints recorded by the batch jobs, the 2 failed rows beside the map.
    assert page.evaluate("document.querySelectorAll('#map path.processed').length") == 7
    assert page.evaluate("document.querySelectorAll('#unmapped li').length") == 2
    page.click_element("document.querySelector('#map path')")
    chosen = page.evaluate("document.querySelector('#map path.selected').dataset.i")
    assert page.evaluate("[...document.querySelectorAll('tr.selected')].map(r => r.id)") == [f"row-{chosen}"]
    page.evaluate("window.scrollTo(0, 0)")

    shot = tmp_path / "report.png"
    page.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nreport screenshot: {shot}")
    if SCREENSHOT:
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


# ------------------------------------------------------------------------------------ the map


def county_delivery() -> list[dict]:
    """A county delivery as the report's rows: a 4x3 grid of orthoimagery tiles (one with a clipped collar, one
    already done, one failed at verify), an elevation model over them, and two rows without a footprint."""

    def tile(col: int, row: int, clipped: bool = False) -> dict:
        lon, lat, d = 172.55 + col * 0.03, -43.50 - row * 0.022, 0.03
        ring = [[lon, lat], [lon + d, lat], [lon + d, lat - 0.022], [lon, lat - 0.022]]
        if clipped:
            ring = [[lon + 0.012, lat], [lon + d, lat], [lon + d, lat - 0.022], [lon, lat - 0.022], [lon, lat - 0.009]]
        return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}

    done = {
        "bands": "3",
        "input_bytes": 42_000_000,
        "cog_bytes": 61_000_000,
        "codec": "LZW",
        "input_codec": "JPEG",
        "crs": "EPSG:2193",
        "pixel_size": [0.3, 0.3],
        "pixel_unit": "metre",
        "overviews": [2, 4, 8, 16],
        "dtype": "uint8",
        "width": 8000,
        "height": 6000,
        "seconds": 41.2,
    }
    table = [
        {
            "key": "canterbury/ortho/BX24_0305.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "verify-failed",
            "step": "verify",
            "reason": "verify: 12 pixels differ from the source",
            "footprint": tile(2, 1),
        },
        {
            "key": "canterbury/ortho/BX24_0412.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "input-missing",
            "step": "download",
            "reason": "download: input object not found in bucket 'county-in'",
        },
        {
            "key": "canterbury/ortho/BX24_0101.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "manifest-row",
            "reason": "line 14: duplicate of line 2",
        },
    ]
    for row in range(3):
        for col in range(4):
            if (col, row) == (2, 1):
                continue
            key = f"canterbury/ortho/BX24_{row + 1:02d}{col + 1:02d}.tif"
            outcome = "skipped (already done)" if (col, row) == (3, 2) else "processed"
            table.append({**done, "key": key, "outcome": outcome, "footprint": tile(col, row, (col, row) == (0, 0))})
    table.append(
        {
            **done,
            "key": "canterbury/dem/BX24_dem_1m.tif",
            "bands": "1",
            "outcome": "processed",
            "codec": "ZSTD",
            "input_codec": "LZW",
            "dtype": "float32",
            "input_bytes": 90_000_000,
            "cog_bytes": 52_000_000,
            "pixel_size": [1.0, 1.0],
            "overviews": [2, 4, 8],
            "footprint": {
                "type": "Polygon",
                "coordinates": [
                    [[172.57, -43.51], [172.66, -43.505], [172.665, -43.56], [172.575, -43.565], [172.57, -43.51]]
                ],
            },
        }
    )
    return table


def open_delivery(page: Page, tmp_path: Path, table: list[dict]) -> None:
    config = {
        "run_id": "20261125-093000",
        "manifests": [{"id": "m1", "raw_key": "canterbury-2026-11-25-raw.csv"}],
        "s3": {"input_bucket": "county-in", "output_bucket": "county-cogs"},
    }
    (tmp_path / "report.html").write_text(render_html(tmp_path, table, config), encoding="utf-8")
    page.open((tmp_path / "report.html").as_uri())


def test_map_footprints_select_rows_and_rows_highlight_footprints(page, tmp_path):
    table = county_delivery()
    open_delivery(page, tmp_path, table)
    assert page.problems() == []
    with_footprint = [i for i, row in enumerate(table) if row.get("footprint")]
    assert page.evaluate("document.querySelectorAll('#map path').length") == len(with_footprint) == 13
    drawn = page.evaluate(
        "[...document.querySelectorAll('#map path')].map(p => p.getBBox().width > 1 && p.getBBox().height > 1)"
    )
    assert all(drawn), "every footprint has a visible size on the map"
    assert page.evaluate("[...document.querySelectorAll('#unmapped li .key')].map(e => e.textContent)") == [
        "canterbury/ortho/BX24_0412.tif",
        "canterbury/ortho/BX24_0101.tif",
    ]
    colours = page.evaluate("[...document.querySelectorAll('#map path')].map(p => getComputedStyle(p).fill)")
    drawn_order = page.evaluate("[...document.querySelectorAll('#map path')].map(p => p.dataset.i)")
    assert drawn_order[-1] == "0", "the failed footprint is drawn last, on top"
    assert len(set(colours)) == 3, "processed, already done and failed are told apart"

    # A real click on the failed tile's footprint selects its row and scrolls it into view.
    x, y = page.evaluate(
        "(() => { const r = document.querySelector('#map path.failed').getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    hit = page.evaluate(f"document.elementFromPoint({x}, {y}).getAttribute('data-i')")
    assert hit == "0", "the failed footprint is on top at its centre"
    page.click(x, y)
    selected = page.evaluate("[...document.querySelectorAll('tr.selected')].map(r => r.id)")
    assert selected == ["row-0"]
    assert page.evaluate(
        "(() => { const r = document.getElementById('row-0').getBoundingClientRect();"
        " return r.top >= 0 && r.bottom <= innerHeight; })()"
    ), "the row is scrolled into view"

    # A click on a row highlights its footprint (and only it).
    dem = next(i for i, row in enumerate(table) if "dem" in row["key"])
    page.click_element(f"document.querySelector('#row-{dem} .key')")
    assert page.evaluate("[...document.querySelectorAll('#map path.selected')].map(p => p.dataset.i)") == [str(dem)]
    assert page.evaluate("[...document.querySelectorAll('tr.selected')].map(r => r.id)") == [f"row-{dem}"]
    assert page.evaluate(
        "document.querySelector('#map path.selected') === document.querySelector('#footprints').lastElementChild"
    ), "drawn on top of the others"

    # Zoom in keeps the footprints, "fit" gives the whole delivery back.
    home = page.evaluate("document.getElementById('map').getAttribute('viewBox')")
    page.click_element("document.getElementById('map-in')")
    zoomed = page.evaluate("document.getElementById('map').getAttribute('viewBox')")
    assert float(zoomed.split()[2]) == pytest.approx(float(home.split()[2]) / 2)
    page.click_element("document.getElementById('map-fit')")
    assert page.evaluate("document.getElementById('map').getAttribute('viewBox')") == home
    assert page.problems() == []

    page.click_element("document.querySelector('#map path.failed')")  # the picture shows it selected
    assert page.evaluate("[...document.querySelectorAll('tr.selected')].map(r => r.id)") == ["row-0"]
    assert page.evaluate("[...document.querySelectorAll('#map path')].map(p => p.dataset.i)") == drawn_order, (
        "a footprint no longer selected goes back under the others (the failed one is drawn last anyway)"
    )
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "report-map.png"
    page.screenshot(shot, selector=".map-section")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if SCREENSHOT:
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(SCREENSHOT).with_name("report-map.png"))


def test_the_map_control_fails_when_nothing_is_drawn(page, tmp_path):
    """Control for the count above: a delivery without footprints draws no path and lists every row."""
    table = [{**row, "footprint": None} for row in county_delivery()]
    open_delivery(page, tmp_path, table)
    assert page.evaluate("document.querySelectorAll('#map path').length") == 0
    assert page.evaluate("document.querySelectorAll('#unmapped li').length") == len(table)
    assert page.problems() == []
