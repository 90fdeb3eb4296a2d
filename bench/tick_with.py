"""``cog-pipeline`` with run-config overrides: ``python bench/tick_with.py '{"batch_size": 50}' tick ...``.

The tick API has no config override, so this wraps ``cog_pipeline.tick.run_config`` to add the given
keys to the run.yaml it writes (run.yaml is read after config/config.yaml, so its values win for
Snakemake, the batch jobs and the aggregate alike). Used by the benchmark only.
"""

import json
import sys

from cog_pipeline import cli, tick

overrides = json.loads(sys.argv[1])
_original = tick.run_config


def run_config(*args, **kwargs):
    config = _original(*args, **kwargs)
    config.update(overrides)
    return config


tick.run_config = run_config
sys.exit(cli.main(sys.argv[2:]))
