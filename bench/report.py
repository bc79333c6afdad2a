"""Figures, targets and the summary table (printed and written as JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["min", "max"]


@dataclass
class Figure:
    """One measured value; ``target`` is a bound (``>=`` for "min", ``<=`` for "max")."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: float | None = None
    direction: Direction = "min"
    #: When the target is on the ratio to the baseline rather than on the value itself.
    target_on_ratio: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline):
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        checked = self.ratio if self.target_on_ratio else self.value
        if checked is None or math.isnan(checked):
            return "MISS"
        ok = checked >= self.target if self.direction == "min" else checked <= self.target
        return "PASS" if ok else "MISS"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        op = ">=" if self.direction == "min" else "<="
        if self.target_on_ratio:
            return f"ratio {op} {self.target:g}"
        return f"{op} {_num(self.target)} {self.unit}"

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["verdict"] = self.verdict
        d["target_text"] = self.target_text
        return d


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(figures: Sequence[Figure]) -> str:
    header = ("name", "value", "unit", "baseline", "ratio", "target", "result")
    rows = [
        (
            f"{f.section} {f.name}",
            _num(f.value),
            f.unit,
            _num(f.baseline),
            "-" if f.ratio is None else f"{f.ratio:.2f}",
            f.target_text,
            f.verdict,
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {1, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    baselines = [f"  [{f.section} {f.name}] {f.baseline_name}" for f in figures if f.baseline_name]
    if baselines:
        out += ["", "baselines:", *baselines]
    notes = [f"  [{f.section} {f.name}] {f.note}" for f in figures if f.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": [f.as_json() for f in figures]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan if empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]
