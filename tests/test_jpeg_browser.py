"""A preview written strip by strip (restart markers between strips) shows in a real browser exactly
as one encode of the whole image does (headless chromium; skipped where there is none, see
tests/test_browser.py)."""

from __future__ import annotations

import base64

import numpy as np

from test_browser import chromium, page  # noqa: F401 - the browser fixtures
from test_jpegstrips import image, one_shot, strips


def test_browser_decodes_a_strip_jpeg_like_a_one_shot_jpeg(page, tmp_path):  # noqa: F811
    height, width = 203, 157
    pixels = image(height, width, 3, seed=9)
    files = {
        "s": strips(pixels, 32),  # 7 strips, 6 restart markers
        "w": one_shot(pixels),
        "b": strips(pixels, 32)[:-4000],
    }  # control: a damaged file
    # data: URIs (a file: image would taint the canvas and hide its pixels)
    (tmp_path / "page.html").write_text(
        "<!DOCTYPE html>"
        + "".join(
            f'<img id="{k}" src="data:image/jpeg;base64,{base64.b64encode(v).decode()}">' for k, v in files.items()
        )
    )
    page.open((tmp_path / "page.html").as_uri())
    script = """(() => {
      const read = id => { const i = document.getElementById(id);
        const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(i, 0, 0);
        return {w: i.naturalWidth, h: i.naturalHeight, px: Array.from(g.getImageData(0, 0, c.width, c.height).data)}; };
      return [read('s'), read('w'), read('b')]; })()"""
    got_strips, got_whole, got_broken = page.evaluate(script)
    assert (got_strips["w"], got_strips["h"]) == (width, height) == (got_whole["w"], got_whole["h"])
    a = np.array(got_strips["px"], dtype=int).reshape(height, width, 4)[..., :3]
    b = np.array(got_whole["px"], dtype=int).reshape(height, width, 4)[..., :3]
    assert np.abs(a - b).max() <= 1  # the same decoder on the same coefficients
    assert np.abs(a - pixels).mean() < 20  # and it is the image
    # control: the browser does not show a truncated file as the image (grey fill or no pixels at all)
    broken = np.array(got_broken["px"], dtype=int)
    assert broken.size == 0 or np.abs(broken.reshape(height, width, 4)[..., :3] - a).mean() > 1
