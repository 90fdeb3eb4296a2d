"""Run one tick in a process of its own, from JSON options (the fault tests start and SIGKILL it).

``python tests/faults/tickproc.py '{"input_bucket": ..., "output_bucket": ..., "settings": {...},
"workdir": ..., "overrides": {...}, "options": {...}}'`` prints the result as JSON on its last line.
"""

import json
import sys
from pathlib import Path

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.logs import configure_cli
from cog_pipeline.storage.s3 import S3Settings
from cog_pipeline.control.tick import TickOptions, TickResult, tick


def main() -> int:
    args = json.loads(sys.argv[1])
    configure_cli()
    opts = TickOptions(
        input_bucket=args["input_bucket"],
        output_bucket=args["output_bucket"],
        settings=S3Settings(**args["settings"]),
        workdir=Path(args["workdir"]),
        run_overrides=args.get("overrides", {}),
        **args.get("options", {}),
    )
    try:
        result = tick(opts)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result_json(result))
    return result.exit_code


def result_json(result: TickResult) -> str:
    """A tick's result as the one JSON line this script (and a forked tick, faults.harness) prints last."""
    return json.dumps(
        {
            "run_dir": str(result.run_dir) if result.run_dir else None,
            "exit_code": result.exit_code,
            "manifests": result.manifests,
            "resumed": [str(p) for p in result.resumed],
        }
    )


if __name__ == "__main__":
    sys.exit(main())
