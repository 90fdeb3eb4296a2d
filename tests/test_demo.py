"""The demo's own inputs: generated without GDAL complaints, a hillshade that is a picture, one labelled failure."""

from __future__ import annotations

import logging

import numpy as np
import rasterio

from cog_pipeline.core.naming import plural
from cog_pipeline.ui import demo


def test_generated_samples_make_no_gdal_error_and_are_what_they_say(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG):
        files = demo.sample_files(tmp_path)
    gdal = [
        r.getMessage() for r in caplog.records if "GDAL signalled" in r.getMessage() or "TIFFSetField" in r.getMessage()
    ]
    assert gdal == [], gdal
    with rasterio.open(files["imagery/landuse/paletted.tif"]) as src:
        assert src.colorinterp[0].name == "palette" and src.colormap(1)[3][:3] == (220, 20, 60)
    with rasterio.open(files["imagery/hillshade/hillshade.tif"]) as src:
        values = src.read(1, masked=True)
    # A picture, not a black square: most pixels valid, a wide spread of grey levels among them.
    assert values.mask.mean() < 0.25 and np.ptp(values.compressed()) > 100 and values.compressed().std() > 15
    assert demo.EXAMPLE_FAILURE_KEY not in files  # the labelled failure is not a GeoTIFF, never a sample


def test_plural():
    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"
