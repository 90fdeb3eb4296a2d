"""``python -m cog_pipeline.htcondor``: the driver's supervisor and helpers for manual use."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.rundir import RunDir
from .schedd import submit_driver
from .settings import load_settings
from .staging import snakemake_args
from .supervisor import SUPERVISOR_LOG, append_log_to, supervise


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2 with a one-line error on PipelineError)."""
    parser = argparse.ArgumentParser(
        prog="python -m cog_pipeline.htcondor",
        description="The driver's supervisor, and helpers for a run directory on the pool.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("supervise", help="run a driver command with the hold policy, then clean the run up")
    p.add_argument("--run-id", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p = sub.add_parser("snakemake-args", help="print the per-run Snakemake arguments (manual reruns)")
    p.add_argument("run_dir")
    p = sub.add_parser("submit-driver", help="queue (again) the driver of a run directory")
    p.add_argument("run_dir")
    p = sub.add_parser("hold-policy", help="print the PeriodicRelease / PeriodicRemove expressions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "supervise":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                parser.error("supervise needs -- COMMAND")
            append_log_to(Path("logs") / SUPERVISOR_LOG)
            return supervise(args.run_id, cmd)
        run_dir = Path(getattr(args, "run_dir", ".")).resolve()
        if args.command == "hold-policy":
            policy = load_settings().hold_policy
            print(f"periodic_release = {policy.release_expression()}")
            print(f"periodic_remove = {policy.remove_expression()}")
            return 0
        run = RunDir(run_dir).config
        if args.command == "snakemake-args":
            print(shlex.join(snakemake_args(run_dir, run.run_id, run.pattern)))
            return 0
        cluster = submit_driver(run_dir, run.pattern, run.run_id, ["drive", str(run_dir), "--executor", "htcondor"])
        print(f"driver of {run_dir.name}: cluster {cluster}")
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
