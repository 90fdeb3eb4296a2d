"""Collects figures (each with its target, ratio, pass/fail and the load beside it), prints them as
they come, and writes ``bench/results/bench-<TS>.json`` / ``.md`` (plus ``latest.*``)."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    section: str
    name: str
    measured: float | None
    unit: str
    target: str = ""  # e.g. "<= 0.75"; empty = reported only
    ratio: float | None = None  # measured / limit for "<=" targets, measured / floor for ">=" targets
    passed: bool | None = None
    load: float | None = None
    note: str = ""

    def row(self) -> list[str]:
        measured = "n/a" if self.measured is None else f"{_num(self.measured)} {self.unit}".strip()
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = {True: "pass", False: "FAIL", None: "-"}[self.passed]
        load = "" if self.load is None else f"{self.load:.2f}"
        return [self.section, self.name, self.target or "-", measured, ratio, verdict, load]


def _num(v: float) -> str:
    if isinstance(v, int) or (abs(v) >= 100 and float(v).is_integer()):
        return f"{int(v)}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def check(measured: float | None, target: str) -> tuple[float | None, bool | None]:
    """(ratio, passed) for a target like '<= 500' or '>= 0.7'."""
    if measured is None or not target:
        return None, None
    op, limit = target.split()
    limit_v = float(limit)
    if op == "<=":
        return (measured / limit_v if limit_v else None), measured <= limit_v
    if op == ">=":
        return (measured / limit_v if limit_v else None), measured >= limit_v
    raise ValueError(target)


HEADER = ["section", "figure", "target", "measured", "ratio to target", "pass", "load (1 min)"]


class Report:
    def __init__(self, out_dir: Path, argv: list[str], quick: bool):
        self.out_dir = Path(out_dir)
        self.started = time.time()
        self.figures: list[Figure] = []
        self.details: dict[str, Any] = {}
        self.meta = {
            "argv": argv,
            "quick": quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        try:
            import rasterio
            import snakemake

            self.meta.update(
                rasterio=rasterio.__version__, gdal=rasterio.__gdal_version__, snakemake=snakemake.__version__
            )
        except Exception:  # noqa: BLE001
            pass

    def add(
        self,
        section: str,
        name: str,
        measured: float | None,
        unit: str = "",
        target: str = "",
        load: float | None = None,
        note: str = "",
    ) -> Figure:
        ratio, passed = check(measured, target)
        fig = Figure(section, name, measured, unit, target, ratio, passed, load, note)
        self.figures.append(fig)
        row = fig.row()
        print(
            f"  [{row[0]}] {row[1]}: {row[3]}  (target {row[2]}, ratio {row[4] or '-'}, {row[5]}, load {row[6]})"
            + (f"  -- {note}" if note else ""),
            flush=True,
        )
        return fig

    def detail(self, key: str, value: Any) -> None:
        self.details[key] = value

    def markdown(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        for fig in self.figures:
            lines.append("| " + " | ".join(fig.row()) + " |")
        notes = [f"- [{f.section}] {f.name}: {f.note}" for f in self.figures if f.note]
        elapsed = time.time() - self.started
        head = (
            f"Run {self.meta['started']} on {self.meta['host']} ({self.meta['cpus']} CPUs), "
            f"`{' '.join(self.meta['argv'])}`, {elapsed / 60:.1f} min; GDAL {self.meta.get('gdal')}, "
            f"rasterio {self.meta.get('rasterio')}, Snakemake {self.meta.get('snakemake')}."
        )
        return "\n".join([head, "", *lines, "", *(["Notes:", "", *notes] if notes else [])]) + "\n"

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        self.meta["elapsed_s"] = round(time.time() - self.started, 1)
        data = {"meta": self.meta, "figures": [asdict(f) for f in self.figures], "details": self.details}
        text = json.dumps(data, indent=2, default=str)
        md = self.markdown()
        for name in (f"bench-{stamp}", "latest"):
            (self.out_dir / f"{name}.json").write_text(text)
            (self.out_dir / f"{name}.md").write_text(md)
        return self.out_dir / f"bench-{stamp}.md"
