"""The run report in a real headless browser (Debian's chromium), driven over the DevTools protocol.

The tests never install the browser (``.ci/run`` does: ``apt-get install chromium``); without it
they are skipped with the reason in the summary (pytest -ra), and fail where CI requires them.
Console messages, uncaught exceptions, failed loads and CSP violations are collected from the
protocol's events, not guessed from log text, and a control page proves the collector sees them. Set
COG_PIPELINE_REPORT_SCREENSHOT=docs/img/report.png to refresh the README's picture.
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
from cog_pipeline.work.manifest import write_rows_csv
from cog_pipeline.control.tick import TickOptions, tick
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
        remap = ("import os, sys; a, b = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2])); "
                 "os.dup2(a, 3); os.dup2(b, 4); os.set_inheritable(3, True); os.set_inheritable(4, True); "
                 "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", remap, str(to_browser_r), str(from_browser_w), browser, "--headless",
             "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf, self._id, self.events = b"", 0, []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

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
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
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

    def screenshot(self, path: Path, max_height: int = 1400) -> None:
        height = min(max_height, int(self.evaluate("document.documentElement.scrollHeight")))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

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
    """The demo's six sample images, a hostile key, a missing image and a bad row, through a real tick."""
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
    return tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings,
                            workdir=tmp_path / "work"))


@pytest.mark.slow
def test_report_in_a_real_browser(page, seed, buckets, settings, tmp_path):
    result = mixed_run(seed, settings, tmp_path)
    summary = result.manifests[0]
    assert (summary["processed"], summary["failed"]) == (7, 2)

    page.open((result.run_dir / "report.html").resolve().as_uri())
    assert page.problems() == []
    counts = page.evaluate("({total: document.getElementById('total-count').textContent,"
                           " processed: document.getElementById('processed-count').textContent,"
                           " failed: document.getElementById('failed-count').textContent})")
    assert counts == {"total": "9", "processed": "7", "failed": "2"}
    outcomes = page.evaluate("[...document.querySelectorAll('tbody tr .outcome')].map(e => e.textContent)")
    assert outcomes == ["failed"] * 2 + ["processed"] * 7, "failed rows come first"
    keys = page.evaluate("[...document.querySelectorAll('tbody .key')].map(e => e.textContent)")
    assert HOSTILE_KEY in keys, "the hostile key is shown as text"
    images = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(images) == 7 and all(0 < w <= 128 and 0 < h <= 128 for w, h in images), images
    todo = page.evaluate("[...document.querySelectorAll('tr.failed .todo')].map(e => e.textContent)")
    assert len(todo) == 2 and "upload" in todo[0].lower()

    shot = tmp_path / "report.png"
    page.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nreport screenshot: {shot}")
    if SCREENSHOT:
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
