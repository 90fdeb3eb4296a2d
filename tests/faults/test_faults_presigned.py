"""A run whose presigned URLs expire before its batch job starts (s3.transfer: presigned, forced on the local
executor): every row fails as urls-expired with a reason that says what to do, nothing is left at an output key,
and ``cog-pipeline retry``'s plan, queued, is processed by the next tick with fresh URLs."""

from __future__ import annotations

import time

import pytest

from cog_pipeline.control.retry import plan_retry, queue_retry
from cog_pipeline.storage import s3

#: 60 s is the shortest validity allowed and the margin an image needs to start: the job refuses every image.
EXPIRED = {"s3": {"transfer": "presigned", "presign_expiry_s": 60}}
PRESIGNED = {"s3": {"transfer": "presigned"}}


@pytest.mark.slow
def test_rows_whose_urls_expired_fail_clearly_and_retry_processes_them(world):
    world.image("a/one.tif", seed=1)
    world.image("a/two.tif", seed=2)
    world.manifest("exp/late-raw.csv", ["a/one.tif,1", "a/two.tif,1"])
    assert world.tick(overrides=EXPIRED).exit_code == 0
    failed = world.check(
        {
            "exp/late-": {
                "processed": [],
                "failed": {"a/one.tif": "presigned URLs expired", "a/two.tif": "presigned URLs expired"},
            }
        }
    )
    assert "cog-pipeline retry" in failed["exp/late-"]["errors"]
    assert not world.objects(world.output_bucket), "nothing may be left at an output key"
    [run_dir] = sorted(world.workdir.glob("workflow-run-*"))
    summary = (run_dir / "outcome").glob("*.json")
    assert any('"urls-expired"' in p.read_text() for p in summary), "the rows carry the failure code"

    failed_key = next(k for k in world.objects(world.input_bucket) if k.startswith("exp/late-failed-"))
    client = s3.make_client(world.settings)
    plan = plan_retry(client, world.input_bucket, failed_key)
    assert plan is not None and sorted(r[0] for r in plan.rows) == ["a/one.tif", "a/two.tif"]
    queue_retry(client, world.input_bucket, plan)
    time.sleep(1.1)
    assert world.tick(overrides=PRESIGNED).exit_code == 0
    done = world.outcomes()
    retried = [t for stem, triples in done.items() if stem != "exp/late-" for t in triples]
    assert retried and sorted(retried[-1]["processed"].splitlines()) == ["a/one.tif,1", "a/two.tif,1"], done
    assert {"a/one.tif", "a/two.tif", "a/one.jpg", "a/two.jpg"} <= set(world.objects(world.output_bucket))
