"""``cog-pipeline demo``: the whole pipeline on sample GeoTIFFs, with S3 on loopback and local Snakemake."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.transform import from_origin

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.storage import s3
from cog_pipeline.storage.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, local_s3_server
from cog_pipeline.core.naming import is_tiff_key, jpeg_key, plural
from cog_pipeline.work.manifest import write_rows_csv

if TYPE_CHECKING:
    from cog_pipeline.control.tick import TickResult

INPUT_BUCKET = "cog-demo-input"
OUTPUT_BUCKET = "cog-demo-output"
MANIFEST_KEY = "demo-raw.csv"

#: Sample key -> local file (real rasters from rasterio's test data, see samples/README.md). Not its
#: shade.tif: every valid pixel of it is 0 (a nodata-mask test file), so its preview is a black square.
SAMPLES = {
    "imagery/landsat/RGB.byte.tif": "RGB.byte.tif",
    "imagery/landsat/RGBA.byte.tif": "RGBA.byte.tif",
    "imagery/small/byte.tif": "byte.tif",
}
#: The demo's one deliberately failing row: an object under a .tif key that is not a GeoTIFF. It shows
#: what a failed row looks like (outcome CSVs, report, per-image log) and gives `retry` something to do.
EXAMPLE_FAILURE_KEY = "imagery/example-failure/not-a-geotiff.tif"
EXAMPLE_FAILURE_BODY = b"Not a GeoTIFF: the cog-pipeline demo's deliberate example of a failed row.\n"


def _elevation(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype("float64") / size
    return 200 + 800 * (np.sin(3 * x) * np.cos(2 * y) + 1) + 30 * np.sin(40 * x * y)


def make_dem(path: Path, size: int = 512) -> None:
    """A smooth synthetic uint16 elevation model (1 band), georeferenced in UTM."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint16",
        crs="EPSG:32616",
        transform=from_origin(300000, 4800000, 10, 10),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(_elevation(size).astype("uint16"), 1)


def make_hillshade(path: Path, size: int = 512, nodata: int = 255) -> None:
    """A uint8 hillshade of the synthetic terrain (sun from the north-west, 45 degrees up), with a
    collar of ``nodata`` outside a tilted footprint, as a clipped county tile has."""
    y, x = np.mgrid[0:size, 0:size].astype("float64") / size
    elevation = _elevation(size) + 25 * np.sin(25 * x + 6 * np.sin(9 * y)) * np.cos(18 * y)  # ridges and valleys
    dy, dx = np.gradient(elevation, 10.0)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(-dx, dy)
    azimuth, altitude = np.radians(315.0), np.radians(45.0)
    shade = np.sin(altitude) * np.cos(slope) + np.cos(altitude) * np.sin(slope) * np.cos(azimuth - aspect)
    values = np.clip(1 + 253 * shade, 1, 254).astype("uint8")  # 255 is nodata, never a valid value
    values[(x + 0.3 * y < 0.12) | (x + 0.3 * y > 1.15)] = nodata
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32616",
        nodata=nodata,
        transform=from_origin(300000, 4800000, 10, 10),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)


def make_paletted(path: Path, size: int = 256) -> None:
    """A small land-use style raster with a colour table (1 paletted band)."""
    classes = ((np.add.outer(np.arange(size), np.arange(size)) // 32) % 4).astype("uint8")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(-90, 45, 0.001, 0.001),
    )
    with rasterio.open(path, "w", **profile) as dst:
        # The colour map before the pixels: written after them, GDAL has to change the TIFF's photometric
        # tag once strips exist, and libtiff says "Cannot modify tag PhotometricInterpretation while writing".
        dst.write_colormap(
            1, {0: (34, 139, 34, 255), 1: (210, 180, 140, 255), 2: (70, 130, 180, 255), 3: (220, 20, 60, 255)}
        )
        dst.write(classes, 1)


def sample_files(scratch: Path) -> dict[str, Path]:
    """Every valid demo input: key -> local path (real samples plus three generated ones)."""
    files = {key: SAMPLES_DIR / name for key, name in SAMPLES.items()}
    files["imagery/hillshade/hillshade.tif"] = scratch / "hillshade.tif"
    make_hillshade(files["imagery/hillshade/hillshade.tif"])
    files["imagery/county scans/dem uint16.tif"] = scratch / "dem.tif"
    make_dem(files["imagery/county scans/dem uint16.tif"])
    files["imagery/landuse/paletted.tif"] = scratch / "paletted.tif"
    make_paletted(files["imagery/landuse/paletted.tif"])
    return files


def write_key_files(directory: Path) -> tuple[Path, Path]:
    """Key files for the local server (owner-only permissions, as real ones should have)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, value in (("access_key", LOCAL_ACCESS_KEY), ("secret_key", LOCAL_SECRET_KEY)):
        path = directory / name
        path.write_text(value + "\n", encoding="utf-8")
        os.chmod(path, 0o600)
        paths.append(path)
    return paths[0], paths[1]


def program() -> str:
    """How to call cog-pipeline from a new shell: its name when that is on PATH, else the path of the
    venv's own script (after `make demo`, nothing has activated .venv)."""
    script = Path(sys.executable).parent / "cog-pipeline"
    found = shutil.which("cog-pipeline")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "cog-pipeline"
    return shlex.quote(str(script))


def operator_commands(endpoint: str, access: Path, secret: Path, workdir: Path, failed_key: str | None) -> list[str]:
    """Ready-to-paste ``status`` and ``retry`` commands against the demo's server."""
    creds = f"-a {shlex.quote(str(access))} -s {shlex.quote(str(secret))} -e {endpoint}"
    commands = [f"{program()} status {creds} --input-bucket {INPUT_BUCKET} --workdir {shlex.quote(str(workdir))}"]
    if failed_key:
        commands.append(f"{program()} retry {creds} --input-bucket {INPUT_BUCKET} --dry-run {shlex.quote(failed_key)}")
    return commands


def serve_until_interrupted(commands: list[str]) -> None:
    """Keep the demo's S3 server up (the caller's context) until Ctrl-C, showing what to try meanwhile."""
    print("\nThe local S3 server stays up until Ctrl-C. In another shell (same directory, venv active), try:")
    for command in commands:
        print(f"  {command}")
    if len(commands) > 1:
        print(
            f"(`retry --dry-run` shows the demo's example failure, {EXAMPLE_FAILURE_KEY}, queued again; for real "
            "you would first upload a GeoTIFF under that key, then retry without --dry-run.)"
        )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nStopping the local S3 server.")


def run_demo(
    workdir: Path,
    cores: int = 2,
    serve: bool = False,
    after: Callable[[s3.S3Settings, TickResult], None] | None = None,
    config_file: Path | None = None,
) -> int:
    """Seed a local S3 server, run one tick, fetch and check the results; 0 when every pair is valid.

    While the server is still up, ``after(settings, tick result)`` is called if given, and with
    ``serve`` the server stays up until Ctrl-C so that ``status`` and ``retry`` can be tried on it.
    """
    from rio_cogeo.cogeo import cog_validate

    from cog_pipeline.control.tick import TickOptions, tick

    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    shutil.rmtree(results, ignore_errors=True)
    access, secret = write_key_files(workdir / "keys")
    with local_s3_server() as endpoint:
        print(f"Local S3 server: {endpoint} (buckets {INPUT_BUCKET}, {OUTPUT_BUCKET})")
        settings = s3.S3Settings(endpoint_url=endpoint, access_key_file=str(access), secret_key_file=str(secret))
        client = s3.make_client(settings)
        client.create_bucket(Bucket=INPUT_BUCKET)
        client.create_bucket(Bucket=OUTPUT_BUCKET)
        files = sample_files(_scratch(workdir))
        for key, path in files.items():
            client.upload_file(str(path), INPUT_BUCKET, key)
        rows = []
        for key, path in files.items():
            with rasterio.open(path) as src:
                rows.append((key, str(src.count)))
        s3.put_bytes(client, INPUT_BUCKET, EXAMPLE_FAILURE_KEY, EXAMPLE_FAILURE_BODY)
        all_rows = [*rows, (EXAMPLE_FAILURE_KEY, "1")]
        s3.put_bytes(client, INPUT_BUCKET, MANIFEST_KEY, write_rows_csv(all_rows))
        print(
            f"Uploaded {plural(len(files), 'GeoTIFF')}, one example of a bad input ({EXAMPLE_FAILURE_KEY}: not "
            f"a GeoTIFF, expected to fail) and {MANIFEST_KEY} ({plural(len(all_rows), 'row')})\n"
        )

        result = tick(
            TickOptions(
                input_bucket=INPUT_BUCKET,
                output_bucket=OUTPUT_BUCKET,
                settings=settings,
                cores=cores,
                workdir=workdir,
                config_file=config_file,
            )
        )
        ok = result.exit_code == 0 and bool(result.manifests)
        print()
        failed_key = None
        for summary in result.manifests:
            failed_key = summary["failed_key"]
            print(f"{summary['raw_key']}: {summary['processed']} processed, {summary['failed']} failed")
            for name in ("processed_key", "failed_key", "errors_key"):
                key = summary[name]
                dest = results / "outcome" / key
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(INPUT_BUCKET, key, str(dest))
                print(f"  s3://{INPUT_BUCKET}/{key}")
                for line in dest.read_text(encoding="utf-8").splitlines():
                    print(f"      {line}")
            failed_rows = _csv_keys(results / "outcome" / summary["failed_key"])
            if failed_rows != [EXAMPLE_FAILURE_KEY]:
                print(f"  UNEXPECTED failed rows: {failed_rows} (only {EXAMPLE_FAILURE_KEY} should fail)")
                ok = False
        print(f"\nOutputs in s3://{OUTPUT_BUCKET}/ (copied to {results / 'output'}):")
        expected = [k for key, _ in rows for k in (key, jpeg_key(key))]
        for key in expected:
            dest = results / "output" / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            if s3.head(client, OUTPUT_BUCKET, key) is None:
                print(f"  MISSING  {key}")
                ok = False
                continue
            client.download_file(OUTPUT_BUCKET, key, str(dest))
            verdict = "JPEG"
            if is_tiff_key(key):
                valid, errors, _warnings = cog_validate(str(dest), quiet=True)
                verdict = "valid COG" if valid else f"INVALID COG: {errors}"
                ok = ok and valid
            print(f"  {verdict:9}  {key} ({dest.stat().st_size} bytes)")
        for summary in result.manifests:
            if s3.head(client, INPUT_BUCKET, summary["processing_key"]) is not None:
                print(f"  NOT DELETED  {summary['processing_key']}")
                ok = False
        print(f"\nRun directory (logs, status, outcome): {result.run_dir}")
        print(f"Results copied to: {results}")
        if result.run_dir:
            print(
                f"Run report: {result.run_dir / 'report.html'}  (per-image logs: {result.run_dir / 'logs' / 'images'}/)"
            )
        if ok:
            print(
                f"Demo succeeded: every GeoTIFF has a valid COG and a JPEG, and the one expected failure failed: "
                f"{EXAMPLE_FAILURE_KEY} (not a GeoTIFF; its reason is in the errors CSV above and in the report)."
            )
        else:
            print("Demo FAILED: see above.")
        if after is not None:
            after(settings, result)
        if serve:
            serve_until_interrupted(operator_commands(endpoint, access, secret, workdir, failed_key))
        else:
            print(
                f"To try `status` and `retry` (on the expected failure) against the demo's bucket: "
                f"{program()} demo --serve"
            )
    return 0 if ok else 1


def _csv_keys(path: Path) -> list[str]:
    """First column of a key,bands CSV."""
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return [row[0] for row in csv.reader(fh) if row]


def _scratch(workdir: Path) -> Path:
    path = workdir / "generated-inputs"
    path.mkdir(parents=True, exist_ok=True)
    return path
