"""Writing the pattern benchmark down: `results.md` (tables, machine, bars) and a ratio chart.

The markdown holds the medians table, one line per bar (met / not met, with the figure), how
and where it was measured, and the per-round figures. The chart is a horizontal bar per
compared path: its ratio to its baseline measured in the same run, with the bars' thresholds
marked. matplotlib runs on the Agg backend, so no display is needed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Bar:
    """One bar of /work/shared/PERFORMANCE.md, judged on this run (`met` None: not measured)."""

    text: str
    met: bool | None
    figure: str

    def line(self) -> str:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        return f"- **{verdict}**: {self.text} ({self.figure})"


@dataclass(frozen=True)
class Ratio:
    """A chart bar: `label` ran at `value` x `baseline`; `threshold` is its bar, if any."""

    label: str
    value: float
    baseline: str
    threshold: float | None = None


def ratio_text(value: float) -> str:
    """`0.43x`, or two significant digits below 0.1 (`0.0019x`)."""
    return f"{value:.2f}x" if value >= 0.095 else f"{value:.2g}x"


def machine(usable: int) -> str:
    """Cores (`usable`: those this run may use), CPU model, OS and Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({usable} usable), {cpu}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(
    path: Path,
    *,
    title: str,
    header: Sequence[str],
    summary: Sequence[dict[str, Any]],
    bars: Sequence[Bar],
    notes: Sequence[str],
    rounds: Sequence[dict[str, Any]],
    chart: Path | None,
) -> None:
    parts = [f"# {title}", "", *header, "", "## Results", "", markdown_table(summary), ""]
    if chart is not None:
        parts += [f"![ratios to the baseline]({chart.name})", ""]
    parts += ["## Bars", "", *(bar.line() for bar in bars), ""]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    parts += ["## Per round", "", markdown_table(rounds), ""]
    path.write_text("\n".join(parts))


def write_chart(path: Path, ratios: Sequence[Ratio], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.label}\n(vs {r.baseline})" for r in ratios]
    values = [r.value for r in ratios]
    fig, ax = plt.subplots(figsize=(10, 0.62 * len(ratios) + 1.6))
    ys = list(range(len(ratios)))[::-1]
    colors = ["#4c72b0" if r.threshold is None else
              "#55a868" if r.value >= r.threshold else "#c44e52" for r in ratios]
    ax.barh(ys, values, color=colors, height=0.6)
    for y, r, color in zip(ys, ratios, colors, strict=True):
        ax.text(max(r.value, r.threshold or 0.0), y, "  " + ratio_text(r.value), va="center",
                fontsize=9, color=color)
        if r.threshold is not None:
            ax.plot([r.threshold, r.threshold], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlim(0, max([1.2, *values, *(r.threshold or 0 for r in ratios)]) * 1.15)
    ax.set_xlabel("ratio to the baseline measured in the same round\n"
                  "black tick: the bar (green: met, red: not met); grey line: 1x", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
