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
    parts = [
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">',
        f"<SRS>{escape(ds.crs.to_wkt())}</SRS>" if ds.crs else "",
        f"<GeoTransform>{gt}</GeoTransform>",
    ]
    dtype = {"uint8": "Byte", "uint16": "UInt16"}[ds.dtypes[0]]
    for i, b in enumerate(bands, start=1):
        parts.append(
            f'<VRTRasterBand dataType="{dtype}" band="{i}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" DataType="{dtype}" '
            f'BlockXSize="{bx}" BlockYSize="{by}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
            f"</SimpleSource></VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    return "".join(parts)


def ours(src: str, cog: str, jpeg: str, bands: int, options: dict | None = None) -> dict:
    """cog_pipeline.raster.convert.convert_file with default options (validation + pixel check included);
    ``options`` overrides CogOptions fields (e.g. num_threads) for the sweeps."""
    import dataclasses

    from cog_pipeline.raster import convert

    cog_options = dataclasses.replace(convert.CogOptions(), **(options or {}))
    t = time.perf_counter()
    result = convert.convert_file(
        Path(src), Path(cog), Path(jpeg), cog_options, convert.JpegOptions(), expected_bands=bands
    )
    out = {"seconds": time.perf_counter() - t}
    steps = getattr(result, "seconds", None)
    if isinstance(steps, dict):
        out["steps"] = {k: round(float(v), 3) for k, v in steps.items()}
    out["options"] = {k: str(v) for k, v in dataclasses.asdict(cog_options).items()}
    return out


def profile_ours(src: str, cog: str, jpeg: str, bands: int, out: str, options: dict | None = None) -> dict:
    """``ours`` under cProfile (stats dumped to ``out``).

    By hand: ``python bench/tasks.py profile_ours '{JSON args}'``.
    """
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    result = ours(src, cog, jpeg, bands, options)
    prof.disable()
    prof.dump_stats(out)
    return result


def whatif(
    src: str,
    cog: str,
    jpeg: str,
    bands: int,
    jpeg_mode: str = "package",
    parallel: bool = False,
    options: dict | None = None,
    verify_cache_mb: int | None = None,
    trim: bool = False,
    overlap: bool = False,
) -> dict:
    """convert_file rebuilt from the package's own steps with one change, to measure a proposed fix.

    jpeg_mode "vrt": an 8-bit source with no mask/palette is sent to GDAL's JPEG driver through a
    band-subset VRT (what gdal_translate -b does) instead of the windowed render to a temp GeoTIFF.
    parallel: pixel verification and the JPEG run at the same time in two threads (GDAL releases the
    GIL). verify_cache_mb: GDAL cache during verification only. trim: malloc_trim(0) before each step.
    overlap: the JPEG (made from the source, so independent of the COG) runs in a second thread while
    the COG is written, validated and verified.
    """
    import concurrent.futures
    import dataclasses

    import rasterio

    from cog_pipeline.raster import convert, preview, sniff

    cog_options = dataclasses.replace(convert.CogOptions(), **(options or {}))
    src_p, cog_p, jpeg_p = Path(src), Path(cog), Path(jpeg)
    steps: dict[str, float] = {}
    peaks: dict[str, float] = {}

    def timed(name, func, *args):
        if trim:  # give freed heap memory back to the OS between steps (glibc keeps it otherwise)
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if not (parallel or overlap):
            _reset_peak_rss()
        t = time.perf_counter()
        try:
            return func(*args)
        finally:
            steps[name] = round(time.perf_counter() - t, 3)
            peaks[name] = _peak_rss_mb()

    def do_jpeg():
        if jpeg_mode == "vrt":
            with sniff.gdal_env(), rasterio.open(src_p) as ds:
                simple = (
                    ds.dtypes[0] == "uint8"
                    and not sniff.is_palette(ds)
                    and not sniff.has_mask(ds, preview.jpeg_bands(ds.count))
                )
                if simple:
                    source = ds if ds.count in (1, 3) else _band_vrt(ds, str(src_p), preview.jpeg_bands(ds.count))
                    rasterio.shutil.copy(source, str(jpeg_p), driver="JPEG", QUALITY=str(convert.JpegOptions().quality))
                    return
        convert.write_jpeg(src_p, jpeg_p, convert.JpegOptions())

    def do_verify():
        if verify_cache_mb:
            with sniff.gdal_env(verify_cache_mb):
                convert.verify_pixels(src_p, cog_p)
        else:
            convert.verify_pixels(src_p, cog_p)

    t = time.perf_counter()
    with sniff.gdal_env(cog_options.gdal_cache_mb):
        timed("inspect", convert.inspect_input, src_p, cog_options)
        if overlap:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                jpeg_future = pool.submit(timed, "jpeg", do_jpeg)
                timed("cog", convert.write_cog, src_p, cog_p, cog_options)
                timed("validate", convert.validate_cog, cog_p)
                timed("verify", do_verify)
                jpeg_future.result()
            return {"seconds": time.perf_counter() - t, "steps": steps, "step_peak_rss_mb": peaks}
        timed("cog", convert.write_cog, src_p, cog_p, cog_options)
        timed("validate", convert.validate_cog, cog_p)
        if parallel:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(timed, "verify", do_verify), pool.submit(timed, "jpeg", do_jpeg)]
                for f in futures:
                    f.result()
        else:
            timed("verify", do_verify)
            timed("jpeg", do_jpeg)
    return {"seconds": time.perf_counter() - t, "steps": steps, "step_peak_rss_mb": peaks}


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) so the next step's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def floor(
    endpoint: str,
    access_key_file: str,
    secret_key_file: str,
    input_bucket: str,
    output_bucket: str,
    rows: list,
    workdir: str,
) -> dict:
    """The pipeline's floor: the same downloads, convert_file calls and uploads, in one tight loop.

    Conversion options are the workflow's (config/config.yaml ``cog:``/``jpeg:``), uploads carry the
    same content types and metadata as ``cog_pipeline.work.batch``; no HEADs, no Snakemake, no status files.
    """
    from cog_pipeline.control import driver
    from cog_pipeline.storage import s3
    from cog_pipeline.raster.convert import convert_file, cog_options_from_config, jpeg_options_from_config
    from cog_pipeline.work.manifest import jpeg_key

    t = time.perf_counter()
    config = driver.default_config()
    cog_options = cog_options_from_config(config.get("cog", {}))
    jpeg_options = jpeg_options_from_config(config.get("jpeg", {}))
    settings = s3.S3Settings(endpoint_url=endpoint, access_key_file=access_key_file, secret_key_file=secret_key_file)
    client = s3.make_client(settings)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    convert_s = s3_s = 0.0
    for key, bands in rows:
        local_in, cog, jpg = work / "in.tif", work / "cog.tif", work / "prev.jpg"
        t1 = time.perf_counter()
        s3.download_file(client, input_bucket, key, local_in, settings)
        t2 = time.perf_counter()
        convert_file(local_in, cog, jpg, cog_options, jpeg_options, expected_bands=bands)
        t3 = time.perf_counter()
        meta = {"cog-pipeline-source-etag": "floor"}
        s3.upload_file(client, output_bucket, jpeg_key(key), jpg, settings, "image/jpeg", meta)
        s3.upload_file(
            client, output_bucket, key, cog, settings, "image/tiff; application=geotiff; profile=cloud-optimized", meta
        )
        t4 = time.perf_counter()
        convert_s += t3 - t2
        s3_s += (t2 - t1) + (t4 - t3)
    return {"seconds": time.perf_counter() - t, "convert_seconds": convert_s, "s3_seconds": s3_s}


def jpeg_probe(src: str, dst: str, cache_mb: int = 64) -> dict:
    """Only GDAL's JPEG driver (bands 1-3 through a VRT, small cache): its own memory need."""
    import rasterio
    import rasterio.shutil

    t = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=cache_mb * 1024 * 1024):
        with rasterio.open(src) as ds:
            source = _band_vrt(ds, src, [1, 2, 3]) if ds.count > 3 else src
            pixels = ds.width * ds.height
        rasterio.shutil.copy(source, dst, driver="JPEG", QUALITY="80")
    return {"seconds": time.perf_counter() - t, "pixels": pixels}


def import_cost() -> dict:
    """What a fresh process pays before converting anything (imports of the batch job)."""
    t = time.perf_counter()
    import cog_pipeline.work.batch  # noqa: F401

    return {"seconds": time.perf_counter() - t}


TASKS = {
    f.__name__: f for f in (original_cog, original_jpeg, ours, profile_ours, whatif, floor, jpeg_probe, import_cost)
}

if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = TASKS[name](**args)
    result["process_seconds"] = time.perf_counter() - T0
    result["pid"] = os.getpid()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
