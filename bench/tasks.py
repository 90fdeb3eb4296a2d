"""Work run in a fresh child process (one per measurement), so wall time and peak RSS are its own.

``python bench/tasks.py NAME JSON_ARGS`` runs one task and prints one JSON line with the task's own
timings (``seconds``: the work itself, after imports). The parent measures the whole process
(wall time and peak RSS through ``os.wait4``), see ``bench/proc.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


def original_cog(src: str, dst: str) -> dict:
    """``gdal_translate IN tempfile.tif -of COG -CO compress=lzw`` (original generate_cogs.sh).

    With no band/window/type options gdal_translate calls GDALCreateCopy on the source directly,
    which is what rasterio.shutil.copy does. GDAL's defaults are kept (cache 5% of RAM,
    NUM_THREADS unset = 1 thread, COG overview resampling CUBIC).
    """
    import rasterio.shutil

    t = time.perf_counter()
    rasterio.shutil.copy(src, dst, driver="COG", compress="LZW")
    return {"seconds": time.perf_counter() - t}


def original_jpeg(src: str, dst: str, bands: int) -> dict:
    """``gdal_translate COG OUT.jpg -of jpeg -CO quality=80 [-b 1 -b 2 -b 3]``, from the COG.

    For ``-b`` gdal_translate wraps the source in a VRT of the chosen bands and CreateCopy's that;
    the same VRT is built here.
    """
    import rasterio
    import rasterio.shutil

    t = time.perf_counter()
    source = src
    if bands not in (1, 3):
        with rasterio.open(src) as ds:
            source = _band_vrt(ds, src, [1, 2, 3])
    rasterio.shutil.copy(source, dst, driver="JPEG", quality=80)
    return {"seconds": time.perf_counter() - t}


def _band_vrt(ds, path: str, bands: list[int]) -> str:
    """VRT XML exposing ``bands`` of ``ds`` (what gdal_translate -b builds internally)."""
    from xml.sax.saxutils import escape

    bx, by = ds.block_shapes[0][1], ds.block_shapes[0][0]
    gt = ", ".join(repr(v) for v in ds.transform.to_gdal())
    parts = [f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">',
             f"<SRS>{escape(ds.crs.to_wkt())}</SRS>" if ds.crs else "",
             f"<GeoTransform>{gt}</GeoTransform>"]
    dtype = {"uint8": "Byte", "uint16": "UInt16"}[ds.dtypes[0]]
    for i, b in enumerate(bands, start=1):
        parts.append(
            f'<VRTRasterBand dataType="{dtype}" band="{i}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" DataType="{dtype}" '
            f'BlockXSize="{bx}" BlockYSize="{by}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
            f"</SimpleSource></VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "".join(parts)


def ours(src: str, cog: str, jpeg: str, bands: int, tmp_dir: str, options: dict | None = None) -> dict:
    """cog_pipeline.convert.convert_file with default options (validation + pixel check included);
    ``options`` overrides CogOptions fields (e.g. num_threads) for the sweeps."""
    import dataclasses

    from cog_pipeline import convert

    cog_options = dataclasses.replace(convert.CogOptions(), **(options or {}))
    t = time.perf_counter()
    result = convert.convert_file(Path(src), Path(cog), Path(jpeg), cog_options, convert.JpegOptions(),
                                  expected_bands=bands, tmp_dir=Path(tmp_dir))
    out = {"seconds": time.perf_counter() - t}
    steps = getattr(result, "seconds", None)
    if isinstance(steps, dict):
        out["steps"] = {k: round(float(v), 3) for k, v in steps.items()}
    out["options"] = {k: str(v) for k, v in dataclasses.asdict(cog_options).items()}
    return out


def profile_ours(src: str, cog: str, jpeg: str, bands: int, tmp_dir: str, out: str,
                 options: dict | None = None) -> dict:
    """``ours`` under cProfile (stats dumped to ``out``), for the report when a target fails."""
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    result = ours(src, cog, jpeg, bands, tmp_dir, options)
    prof.disable()
    prof.dump_stats(out)
    return result


def import_cost() -> dict:
    """What a fresh process pays before converting anything (imports of the batch job)."""
    t = time.perf_counter()
    import cog_pipeline.batch  # noqa: F401

    return {"seconds": time.perf_counter() - t}


TASKS = {f.__name__: f for f in (original_cog, original_jpeg, ours, profile_ours, import_cost)}

if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = TASKS[name](**args)
    result["process_seconds"] = time.perf_counter() - T0
    result["pid"] = os.getpid()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
