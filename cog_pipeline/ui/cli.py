"""The ``cog-pipeline`` command: parses its arguments and prints what the package's functions return."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from cog_pipeline import __version__
from cog_pipeline.storage.endpoint import DELETE_FALLBACKS
from cog_pipeline.core.errors import ImageError, PipelineError
from cog_pipeline.core.logs import configure_cli
from cog_pipeline.core.naming import plural
from cog_pipeline.storage.s3 import CHECKSUM_MODES, S3_ERRORS, S3Settings, describe_error

log = logging.getLogger("cog_pipeline")


def _add_s3_flags(parser: argparse.ArgumentParser, buckets: bool = True) -> None:
    parser.add_argument("-a", "--access-key-file", help="file holding the S3 access key id")
    parser.add_argument("-s", "--secret-key-file", help="file holding the S3 secret access key")
    parser.add_argument(
        "-e", "--endpoint", help="S3 endpoint: host name (HTTPS) or full URL, e.g. http://127.0.0.1:9000"
    )
    parser.add_argument("--region", default="us-east-1", help="S3 region (default: %(default)s)")
    parser.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="PEM bundle of the CA that signed the endpoint's certificate (default: $AWS_CA_BUNDLE, "
        "else the public CAs of certifi)",
    )
    parser.add_argument(
        "--checksums",
        choices=CHECKSUM_MODES,
        default="auto",
        help="request checksums: auto (only where required, on any endpoint but AWS), when_required "
        "or when_supported (default: %(default)s)",
    )
    parser.add_argument(
        "--delete-fallback",
        choices=DELETE_FALLBACKS,
        default="refuse",
        help="on an unversioned bucket whose server ignores If-Match on DeleteObject: refuse to "
        "claim, or verify-first (delete a claimed manifest right after a HEAD shows it "
        "unchanged) (default: %(default)s)",
    )
    if buckets:
        parser.add_argument("--input-bucket", required=True, help="bucket holding the GeoTIFFs and manifests")
        parser.add_argument("--output-bucket", required=True, help="bucket receiving the COGs and JPEGs")
        parser.add_argument(
            "-p",
            "--pattern",
            default="*raw.csv",
            help="glob matched against full keys to find new manifests (default: %(default)s)",
        )


def _settings(args: argparse.Namespace) -> S3Settings:
    return S3Settings(
        endpoint_url=args.endpoint,
        access_key_file=args.access_key_file,
        secret_key_file=args.secret_key_file,
        region=args.region,
        ca_bundle=args.ca_bundle,
        checksums=args.checksums,
        delete_fallback=args.delete_fallback,
    )


def cmd_tick(args: argparse.Namespace) -> int:
    from cog_pipeline.control.tick import TickOptions, tick

    result = tick(
        TickOptions(
            input_bucket=args.input_bucket,
            output_bucket=args.output_bucket,
            settings=_settings(args),
            pattern=args.pattern,
            executor=args.executor,
            cores=args.cores,
            dry_run=args.dry_run,
            workdir=Path(args.workdir).resolve(),
            config_file=_config_file(args),
        )
    )
    _print_summaries(result.manifests)
    if result.run_dir:
        _print_report(result.run_dir)
    return result.exit_code


def _print_summaries(summaries: list[dict]) -> None:
    for summary in summaries:
        print(f"{summary['raw_key']}: {summary['processed']} processed, {summary['failed']} failed")
        print(f"  processed rows: {summary['processed_key']}")
        print(f"  failed rows:    {summary['failed_key']}")
        print(f"  reasons:        {summary['errors_key']}")


def cmd_drive(args: argparse.Namespace) -> int:
    from cog_pipeline.control.driver import drive

    run_dir = Path(args.run_dir).resolve()
    code, summaries = drive(run_dir, executor=args.executor, cores=args.cores)
    _print_summaries(summaries)
    _print_report(run_dir)
    return code


def cmd_aggregate(args: argparse.Namespace) -> int:
    from cog_pipeline.control.driver import finish

    run_dir = Path(args.run_dir).resolve()
    code, summaries = finish(run_dir)
    _print_summaries(summaries)
    _print_report(run_dir)
    return code


def _print_report(run_dir: Path) -> None:
    report = run_dir / "report.html"
    if report.is_file():
        print(f"Run report: {report}  (one log per image in {run_dir / 'logs' / 'images'}/)")


def _config_file(args: argparse.Namespace) -> Path | None:
    """``--config FILE`` as an absolute path (checked to exist), or None."""
    if not getattr(args, "config", None):
        return None
    path = Path(args.config).expanduser().resolve()
    if not path.is_file():
        raise PipelineError(f"config file not found: {args.config} (given by --config)")
    return path


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="site config file (YAML) over the workflow's defaults; keys and rules: config/config.schema.yaml",
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from cog_pipeline.core import config as config_model
    from cog_pipeline.raster.convert import convert_file, cog_options_from_config, jpeg_options_from_config
    from cog_pipeline.raster.gdalerrors import GDAL_LOGGER

    chosen = (
        ("compress", args.compress),
        ("predictor", args.predictor),
        ("level", args.level),
        ("blocksize", args.blocksize),
        ("overview_resampling", args.overview_resampling),
        ("num_threads", args.threads),
    )
    flags = {
        "cog": {k: v for k, v in chosen if v is not None},
        "jpeg": {"quality": args.quality} if args.quality is not None else {},
    }
    config = config_model.load(_config_file(args), flags, source="convert options")
    gdal_log = logging.getLogger(GDAL_LOGGER)
    level = gdal_log.level
    if not args.verbose:  # GDAL's warnings (once each) only with -v: there is no per-image log here
        gdal_log.setLevel(logging.WARNING)
    try:
        result = convert_file(
            args.input,
            args.cog,
            args.jpeg,
            cog_options_from_config(config["cog"]),
            jpeg_options_from_config(config["jpeg"]),
            expected_bands=args.bands,
            expected_from="the --bands option",
        )
    except ImageError as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 1
    finally:
        gdal_log.setLevel(level)
    info = result.info
    print(
        f"{args.input}: {info.width}x{info.height}, {plural(info.count, 'band')} {info.dtype} -> "
        f"{args.cog} ({result.cog_bytes} bytes, valid COG, pixels verified), "
        f"{args.jpeg} ({result.jpeg_bytes} bytes, bands {result.jpeg_bands})"
    )
    for note in result.notes:
        print(f"note: {note}")
    print("seconds: " + json.dumps({k: round(v, 2) for k, v in result.seconds.items()}))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from cog_pipeline.ui.demo import run_demo

    return run_demo(Path(args.workdir).resolve(), cores=args.cores, serve=args.serve, config_file=_config_file(args))


def cmd_start(args: argparse.Namespace) -> int:
    import shlex

    from cog_pipeline.htcondor import CRONDOR_BATCH_PREFIX, start_crondor
    from cog_pipeline.storage.s3 import ca_bundle
    from cog_pipeline.control.tick import TickOptions, connect, run_config

    settings = _settings(args)
    config_file = _config_file(args)
    run_config(
        TickOptions(
            input_bucket=args.input_bucket, output_bucket=args.output_bucket, settings=settings, config_file=config_file
        ),
        "00000000-000000",
        [],
    )  # a bad config: refused here
    connect(TickOptions(input_bucket=args.input_bucket, output_bucket=args.output_bucket, settings=settings))
    tick_argv = [
        "tick",
        "--input-bucket",
        args.input_bucket,
        "--output-bucket",
        args.output_bucket,
        "-p",
        args.pattern,
        "--region",
        args.region,
    ]
    # The Crondor's environment is explicit (AWS_CA_BUNDLE is not passed on): the bundle in use here,
    # from --ca-bundle or AWS_CA_BUNDLE, becomes an explicit --ca-bundle of every tick.
    bundle = ca_bundle(settings)
    for flag, value in (("-a", args.access_key_file), ("-s", args.secret_key_file), ("--ca-bundle", bundle)):
        if value:  # the FILE path: its contents never leave the S3 module
            tick_argv += [flag, str(Path(value).expanduser().resolve())]
    if args.endpoint:
        tick_argv += ["-e", args.endpoint]
    tick_argv += ["--checksums", args.checksums, "--delete-fallback", args.delete_fallback]
    if config_file:
        tick_argv += ["--config", str(config_file)]
    workdir = Path(args.workdir).resolve()
    cluster = start_crondor(
        tick_argv=tick_argv,
        pattern=args.pattern,
        workdir=workdir,
        every_minutes=args.every,
        max_running=args.max_running,
    )
    print(f"Submitted the Crondor as HTCondor cluster {cluster} (batch name {CRONDOR_BATCH_PREFIX}{args.pattern}):")
    print(f"  every {args.every} minutes it runs `cog-pipeline tick` in {workdir}")
    print(f"  logs: {workdir}/crondor_{cluster}.log, .out, .err; runs: {workdir}/workflow-run-<TS>/")
    print(f"Stop it and every job of this pipeline with: cog-pipeline stop -p {shlex.quote(args.pattern)}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from cog_pipeline.htcondor import stop_pipeline

    removed = stop_pipeline(args.pattern)
    if removed:
        print(
            f"Removed {plural(removed, 'job')} of the pipeline watching {args.pattern!r} "
            "(Crondor, drivers, batch jobs)."
        )
    else:
        print(f"No job of the pipeline watching {args.pattern!r} is in the queue.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from cog_pipeline.storage.s3 import make_client
    from cog_pipeline.ui.status import EXIT_BUCKET_UNREADABLE, collect, render_json, render_text

    # Read-only and asked by a person: fail fast when S3 is unreachable (2 requests, 5 s to connect) and show
    # the rest, rather than the ticks' patient 9 attempts.
    settings = dataclasses.replace(_settings(args), max_attempts=1, connect_timeout=5.0)
    client = make_client(settings) if args.input_bucket else None
    state = collect(client, args.input_bucket, Path(args.workdir).resolve(), args.pattern, settings)
    print(render_json(state) if args.json else render_text(state))
    return EXIT_BUCKET_UNREADABLE if state.get("bucket_error") else 0


def cmd_check_endpoint(args: argparse.Namespace) -> int:
    """Probe the endpoint now; print what it honours and what ticks do. Exit 2 where ticks would refuse."""
    from cog_pipeline.storage import endpoint
    from cog_pipeline.control.tick import TickOptions, connect

    settings = _settings(args)
    workdir = Path(args.workdir).resolve()
    client = connect(
        TickOptions(
            input_bucket=args.input_bucket,
            output_bucket=args.output_bucket or args.input_bucket,
            settings=settings,
            workdir=workdir,
        )
    )
    try:
        caps, sem, refusal = endpoint.check(client, settings, args.input_bucket, workdir)
    except S3_ERRORS as exc:
        raise PipelineError(f"cannot probe input bucket '{args.input_bucket}': {describe_error(exc)}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "capabilities": caps.as_dict(),
                    "commit": sem.commit if sem else None,
                    "fallbacks": list(sem.fallbacks) if sem else [],
                    "refusal": refusal,
                },
                indent=2,
            )
        )
    else:
        print(endpoint.table(caps, sem, refusal))
        print(f"(cached in {workdir}; ticks there re-use it for {endpoint.PROBE_EVERY / 3600:.0f} h)")
    return 2 if refusal else 0


def cmd_retry(args: argparse.Namespace) -> int:
    from cog_pipeline.storage.s3 import make_client
    from cog_pipeline.control.retry import plan_retry, queue_retry

    client = make_client(_settings(args))
    plan = plan_retry(client, args.input_bucket, args.failed_key)
    if plan is None:
        print(f"Nothing to retry: {args.failed_key} has no rows (every row of that manifest was processed).")
        return 0
    for reason in plan.left_out:
        print(f"left out (fix the row, then upload it in a new manifest): {reason}")
    if args.dry_run:
        print(f"Would queue {plural(len(plan.rows), 'row')} as s3://{args.input_bucket}/{plan.key}:")
        print(plan.body.decode("utf-8", "replace"), end="")
        return 0
    queue_retry(client, args.input_bucket, plan)
    print(
        f"Queued {plural(len(plan.rows), 'row')} as s3://{args.input_bucket}/{plan.key}; the next tick picks it up "
        "(`cog-pipeline status` shows it waiting)."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cog_pipeline.core import config as config_model

    parser = argparse.ArgumentParser(
        prog="cog-pipeline",
        description="Turn GeoTIFFs in an S3 bucket into Cloud "
        "Optimized GeoTIFFs and JPEG previews, with Snakemake on HTCondor or locally.",
        epilog="New here? `cog-pipeline demo` runs every step on sample images against "
        "a local S3 server. `cog-pipeline COMMAND --help` explains each command; "
        "README.md and docs/operations.md explain the rest.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tick", help="claim new manifests and process them (what the Crondor runs)")
    _add_s3_flags(p)
    _add_config_flag(p)
    p.add_argument(
        "--executor",
        choices=["local", "htcondor"],
        default="local",
        help="local: run here in the foreground; htcondor: submit a driver job (default: %(default)s)",
    )
    p.add_argument("--cores", type=int, default=2, help="cores for the local executor (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; rename and write nothing")
    p.add_argument("--workdir", default=".", help="where workflow-run-<TS>/ directories go (default: .)")
    p.set_defaults(func=cmd_tick)

    help_ = "run the workflow of a run directory, then its final aggregate (what a tick's driver runs)"
    p = sub.add_parser(
        "drive",
        help=help_,
        description=help_[0].upper() + help_[1:] + ". A tick prepares the "
        "run directory; run this by hand to finish a run whose driver is gone (a tick in its working "
        "directory does the same).",
    )
    p.add_argument("run_dir", help="the run's directory, workflow-run-<TS>/")
    p.add_argument(
        "--executor",
        choices=["local", "htcondor"],
        default="local",
        help="local: batch jobs run here; htcondor: batch jobs go to the pool (default: %(default)s)",
    )
    p.add_argument("--cores", type=int, default=2, help="cores for the local executor (default: %(default)s)")
    p.set_defaults(func=cmd_drive)

    help_ = "write the outcome CSVs, report and image logs of a run directory now (the run's final step)"
    p = sub.add_parser(
        "aggregate",
        help=help_,
        description=help_[0].upper() + help_[1:] + ": rows without an "
        "outcome are failed with the reason, the CSVs go to the input bucket and the processing "
        "manifest is deleted. Prints the report's path.",
    )
    p.add_argument("--run-dir", required=True, help="the run's directory, workflow-run-<TS>/")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser(
        "convert",
        help="convert one local GeoTIFF to a COG and a JPEG preview",
        description="Convert one local GeoTIFF to a validated, pixel-verified COG and a "
        "full-resolution JPEG preview. Options not given come from --config, else from "
        "config/config.yaml (rules: config/config.schema.yaml).",
    )
    p.add_argument("input", help="the GeoTIFF to convert (local path)")
    p.add_argument("--cog", required=True, metavar="PATH", help="output COG path (its folder must exist)")
    p.add_argument("--jpeg", required=True, metavar="PATH", help="output JPEG path (its folder must exist)")
    p.add_argument(
        "--bands",
        type=_positive_int,
        metavar="N",
        help="expected band count (a mismatch is only noted; the file's count wins)",
    )
    cog_schema = config_model.schema()["properties"]["cog"]["properties"]
    p.add_argument(
        "--compress",
        type=str.upper,
        choices=cog_schema["compress"]["enum"],
        help="COG codec, lossless only (default: the config's cog.compress, LZW)",
    )
    p.add_argument(
        "--predictor",
        type=str.upper,
        choices=cog_schema["predictor"]["enum"],
        help="TIFF predictor; YES picks STANDARD or FLOATING_POINT per data type (default: the "
        "config's cog.predictor, NO)",
    )
    p.add_argument(
        "--level",
        type=int,
        metavar="N",
        help="compression level: DEFLATE 1-12, ZSTD 1-22, LZMA 0-9, LERC_DEFLATE 1-12, LERC_ZSTD 1-22 "
        "(default: the config's cog.level, the codec's own)",
    )
    p.add_argument(
        "--blocksize",
        type=int,
        metavar="N",
        help="COG tile size in pixels, a multiple of 16 from 64 to 4096 (default: the config's cog.blocksize, 512)",
    )
    p.add_argument(
        "--overview-resampling",
        type=str.lower,
        choices=cog_schema["overview_resampling"]["enum"],
        help="overview resampling; paletted images always use nearest (default: the config's, average)",
    )
    p.add_argument(
        "--threads",
        type=str.upper,
        metavar="N|ALL_CPUS",
        help="COG driver threads: ALL_CPUS or a positive integer (default: the config's cog.num_threads)",
    )
    p.add_argument("--quality", type=int, metavar="1-100", help="JPEG quality 1-100 (default: the config's, 80)")
    _add_config_flag(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="run the whole pipeline on sample images with a local S3 server")
    _add_config_flag(p)
    p.add_argument("--workdir", default="demo-output", help="where results are written (default: %(default)s)")
    p.add_argument(
        "--cores", type=int, default=2, help="cores the demo's local Snakemake may use (default: %(default)s)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep the local S3 server up until Ctrl-C, to try `status` and `retry` on it",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("start", help="submit the Crondor: a tick every 15 minutes on an HTCondor access point")
    _add_s3_flags(p)
    _add_config_flag(p)
    p.add_argument(
        "--every", type=int, default=15, metavar="MINUTES", help="minutes between ticks (default: %(default)s)"
    )
    p.add_argument(
        "--max-running",
        type=int,
        metavar="N",
        help="at most N batch jobs of one run at a time (default: the profile's jobs)",
    )
    p.add_argument("--workdir", default=".", help="where the Crondor logs and workflow-run-<TS>/ go (default: .)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="remove the Crondor, the drivers and every job of the pipeline watching -p")
    p.add_argument("-p", "--pattern", default="*raw.csv", help="the pattern given to start (default: %(default)s)")
    p.set_defaults(func=cmd_stop)

    help_ = "manifests by state in the bucket, local runs, the pipeline's HTCondor jobs"
    p = sub.add_parser(
        "status",
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog="Exit status: 0 when everything could be shown; 1 when the input bucket could not be "
        "listed (S3 unreachable, no such bucket: said in one line, local runs and jobs are "
        "still shown); 2 for a usage or key-file error.",
    )
    _add_s3_flags(p, buckets=False)
    p.add_argument("--input-bucket", help="bucket holding the manifests (omit to show local runs and jobs only)")
    p.add_argument("-p", "--pattern", default="*raw.csv", help="manifest pattern (default: %(default)s)")
    p.add_argument("--workdir", default=".", help="where the workflow-run-* directories are (default: .)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "check-endpoint",
        help="probe what the S3 server honours (conditional requests, "
        "checksums, versioning) and show what ticks do about it",
    )
    _add_s3_flags(p, buckets=False)
    p.add_argument("--input-bucket", required=True, help="the bucket the ticks claim manifests in")
    p.add_argument("--output-bucket", help="also check that this bucket is reachable")
    p.add_argument(
        "--workdir", default=".", help="the ticks' working directory, where the answers are cached (default: .)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check_endpoint)

    p = sub.add_parser("retry", help="re-queue the rows of a <name>failed-<TS>.csv as <name>retry-<TS>-raw.csv")
    _add_s3_flags(p, buckets=False)
    p.add_argument("--input-bucket", required=True, help="bucket holding the failed CSV and the input images")
    p.add_argument("failed_key", help="key of the failed CSV in the input bucket")
    p.add_argument("--dry-run", action="store_true", help="print the rows that would be queued; write nothing")
    p.set_defaults(func=cmd_retry)
    for action in sub._choices_actions:  # each command's --help opens with its one-line summary
        command = sub.choices[action.dest]
        if command.description is None and action.help:
            command.description = action.help[0].upper() + action.help[1:] + "."
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit code (2 for errors the user must fix)."""
    args = build_parser().parse_args(argv)
    configure_cli(args.verbose)
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
