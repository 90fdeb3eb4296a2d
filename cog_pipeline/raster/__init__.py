"""Raster: GeoTIFF -> validated COG + JPEG preview on local files (no S3, no Snakemake)."""
