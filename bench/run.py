"""cog-pipeline benchmarks: ``python bench/run.py`` (or ``make bench``), about 8-10 minutes on 2 cores.

Prints every figure with its target and ratio as it is measured, then writes
``bench/results/bench-<TS>.{json,md}`` and ``bench/results/latest.{json,md}`` (git-ignored).

  python bench/run.py                     # everything (sections 1-6)
  python bench/run.py --quick             # smoke version: small images, few rows (~2 min)
  python bench/run.py --sections 1,6      # only some sections
  python bench/run.py --repeat 3          # best of 3 for the timed conversions (default 2, quick 1)
  python bench/run.py --sections 7        # optional: proposed convert.py changes, measured (~4 min)
  python bench/run.py --sections 8        # optional: job sizing model, then 2000 images on a personal pool
  python bench/run.py --sections 9        # optional: COG size and time per preset vs the plain COG driver (~5 min)
  python bench/run.py --sections 10       # optional: the aggregate of a 100,000-row manifest, in-process (~1 min)

Sections: 1 per-image conversion vs the original's gdal_translate path, 2 memory, 3 pipeline
efficiency (tick vs a tight loop), 4 planning at scale (snakemake -n, tick --dry-run), 5 S3 request
economy, 6 one vs two threads. Generated inputs are cached in bench/results/cache/.
Absolute times drift by up to 40% between runs: compare the ratios, which come from one run, and
look at the load beside each figure (other work on the machine inflates both sides).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from report import Report  # noqa: E402

FULL = dict(
    size=8000,
    big=20000,
    repeats=2,
    images=200,
    image_size=512,
    batch_sizes=[20, 200],
    plan_rows=[10_000, 100_000],
    agg_rows=[1_000, 10_000],
)
QUICK = dict(
    size=2000,
    big=6000,
    repeats=1,
    images=30,
    image_size=256,
    batch_sizes=[10, 30],
    plan_rows=[1_000, 10_000],
    agg_rows=[1_000],
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke version (~2 min)")
    parser.add_argument("--sections", default="1,2,3,4,5,6", help="comma-separated section numbers")
    parser.add_argument("--repeat", type=int, help="repeats of each timed conversion (best is kept)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where results go (default bench/results)")
    parser.add_argument("--workdir", help="scratch directory (default: a temp dir, removed afterwards)")
    args = parser.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    cfg["quick"] = args.quick
    if args.repeat:
        cfg["repeats"] = args.repeat
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    out = Path(args.out)
    cache = out / "cache"
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cog-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    rep = Report(out, ["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])], args.quick)
    rep.detail("config", cfg)
    print(
        f"cog-pipeline bench ({'quick' if args.quick else 'full'}), sections {sorted(sections)}, "
        f"scratch {work}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    failures = 0
    s1 = None

    def run(number: str, title: str, func, *fargs):
        nonlocal failures
        if number not in sections:
            return None
        print(f"\n== {number}. {title}", flush=True)
        started = time.time()
        try:
            return func(*fargs)
        except Exception:  # noqa: BLE001 - one broken section must not hide the others
            failures += 1
            text = traceback.format_exc()
            print(text, flush=True)
            rep.add(number, f"{title}: section crashed", None, note=text.strip().splitlines()[-1])
            return None
        finally:
            print(f"   ({time.time() - started:.0f} s)", flush=True)

    import sec_convert

    s1 = run(
        "1", "Per-image conversion vs the original", sec_convert.section1, rep, cache, work, cfg["size"], cfg["repeats"]
    )
    run("2", "Memory", sec_convert.section2, rep, cache, work, cfg["size"], cfg["big"], s1)
    if "3" in sections:
        import sec_pipeline

        run("3", "Pipeline efficiency", sec_pipeline.section3, rep, work, cfg)
    if "4" in sections:
        import sec_plan

        run("4", "Planning at scale", sec_plan.section4, rep, work, cfg)
    if "5" in sections:
        import sec_s3

        run("5", "S3 economy", sec_s3.section5, rep, work, cfg)
    run("6", "1 vs 2 threads", sec_convert.section6, rep, cache, work, cfg["size"], cfg["repeats"])
    if "7" in sections:
        import sec_whatif

        run(
            "7",
            "Proposed convert.py changes (what-if)",
            sec_whatif.section7,
            rep,
            cache,
            work,
            cfg["size"],
            cfg["repeats"],
        )

    if "8" in sections:  # optional: job sizing model + scale on a personal HTCondor pool (bench/sec_pool.py)
        import sec_pool

        run("8", "Pool: job sizing and scale", sec_pool.section8, rep, cache, work, cfg)
    if "9" in sections:  # optional: COG size and time per preset vs the plain COG driver (bench/sec_presets.py)
        import sec_presets

        run("9", "Presets", sec_presets.section9, rep, cache, work, 4000 if not args.quick else 2000, cfg["repeats"])
    if "10" in sections:  # optional: the aggregate of a 100,000-row manifest, in-process (bench/sec_aggregate.py)
        import sec_aggregate

        run("10", "Aggregate of a large manifest", sec_aggregate.section10, rep, work)

    path = rep.save()
    print("\n" + rep.markdown())
    print(f"Results: {path} (and {out / 'latest.md'}, {out / 'latest.json'})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
