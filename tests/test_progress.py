"""Progress of a foreground run, counted from the per-batch status files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cog_pipeline.control.progress import count_records, images_total, wait_with_progress


def make_run(path):
    (path / "manifests").mkdir(parents=True)
    (path / "manifests" / "a.csv").write_text("a.tif,1\nb.tif,1\n/bad.tif,1\nc.tif,3\n")
    # a valid run.yaml: it is loaded as the workflow does
    (path / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "manifests": [
                    {
                        "id": "m1",
                        "csv": "manifests/a.csv",
                        "key": "a-processing-20260101-000000.csv",
                        "raw_key": "a-raw.csv",
                        "stem": "a-",
                        "timestamp": "20260101-000000",
                    }
                ]
            }
        )
    )
    (path / "status" / "m1").mkdir(parents=True)
    return path


def test_counts_finished_and_in_progress_batches(tmp_path):
    run = make_run(tmp_path)
    assert images_total(run) == 3  # rejected rows are not converted
    assert count_records(run) == (0, 0)
    (run / "status" / "m1" / "batch-00000.jsonl").write_text(
        '{"key": "a.tif", "status": "ok"}\n{"key": "b.tif", "status": "failed", "reason": "x"}\n'
    )
    (run / "status" / "m1" / "batch-00001.jsonl.tmp").write_text('{"key": "c.tif", "status": "ok"}\n')
    assert count_records(run) == (3, 1)  # finished batches and the ones in progress


@pytest.mark.slow
def test_waits_for_the_process_with_and_without_a_bar(tmp_path, capsys):
    run = make_run(tmp_path)
    script = (
        "import time, sys, pathlib; time.sleep(1.5); "
        f"pathlib.Path({str(run / 'status' / 'm1' / 'batch-00000.jsonl.tmp')!r}).write_text("
        '\'{"key": "a.tif", "status": "failed"}\\n\'); time.sleep(1.5); sys.exit(3)'
    )
    for show in (True, False):
        proc = subprocess.Popen([sys.executable, "-c", script])
        assert wait_with_progress(proc, run, show=show) == 3
    out = capsys.readouterr().out
    assert out.count("1/3") == 1, "the bar is drawn once (when asked), never when not"
    assert "1 failed" in out and "img/" in out and "ETA" in out
