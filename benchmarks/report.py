"""Writing the pattern benchmark down: `results.md` (tables, machine, bars) and a ratio chart.

The markdown holds the medians table, one line per bar (met / not met, with the figure), how
and where it was measured, and the per-round figures. The chart is a horizontal bar per
compared path: its ratio to its baseline measured in the same run (log scale), with the
bars' thresholds marked; its numbers are kept in `results.json`, so `python
benchmarks/report.py` redraws `results.png` from them without measuring again. matplotlib
runs on the Agg backend (patternkit.charts), so no display is needed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/report.py` from anywhere
    sys.path.insert(0, str(ROOT))

from patternkit import charts  # noqa: E402


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
    figure: str = ""  # the numbers behind the ratio, e.g. "2,732 vs 5,364 req/s"


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


def write_chart_data(path: Path, ratios: Sequence[Ratio], title: str) -> None:
    """The chart's numbers as JSON, what `python benchmarks/report.py` redraws it from."""
    data = {"title": title, "ratios": [asdict(r) for r in ratios]}
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_chart_data(path: Path) -> tuple[list[Ratio], str]:
    data = json.loads(path.read_text())
    return [Ratio(**r) for r in data["ratios"]], str(data["title"])


def write_chart(path: Path, ratios: Sequence[Ratio], title: str) -> None:
    """One bar per compared path, its ratio on a log axis (0.001x and 1.3x both show)."""
    plt = charts.pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    met, missed, plain = charts.COLORS["closed"], charts.COLORS["error"], charts.COLORS["answer"]
    labels = [f"{r.label}\n(vs {r.baseline}" + (f"; medians {r.figure})" if r.figure else ")")
              for r in ratios]
    values = [r.value for r in ratios]
    marks = [r.threshold for r in ratios if r.threshold is not None]
    low = min([*values, *marks]) / 4
    high = max([1.0, *values, *marks]) * 4  # room for the ratio right of the longest bar
    fig, ax = plt.subplots(figsize=(11, 0.62 * len(ratios) + 2.2))
    ys = list(range(len(ratios)))[::-1]
    colors = [plain if r.threshold is None else met if r.value >= r.threshold else missed
              for r in ratios]
    ax.barh(ys, [v - low for v in values], left=low, color=colors, height=0.6)
    for y, r, color in zip(ys, ratios, colors, strict=True):
        near = r.threshold is not None and r.value < r.threshold < 3 * r.value
        at = r.threshold if near and r.threshold is not None else r.value
        ax.text(at * 1.12, y, ratio_text(r.value), va="center", fontsize=9, color=color)
        if r.threshold is not None:
            ax.plot([r.threshold, r.threshold], [y - 0.42, y + 0.42], color="black", lw=2.5,
                    zorder=4)
    ax.axvline(1.0, color=charts.COLORS["muted"], ls="--", lw=1, zorder=3)
    charts.log_scale(ax, "x")
    ax.set_xlim(low, high)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.grid(True, axis="x", which="major", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("throughput (req/s, jobs/s or rows/s) as a ratio to its baseline measured "
                  "in the same round, log scale", fontsize=9)
    ax.legend(handles=[
        Patch(color=met, label="meets its bar"), Patch(color=missed, label="misses its bar"),
        Patch(color=plain, label="no bar: for reference"),
        Line2D([], [], color="black", lw=2.5, label="its bar (PERFORMANCE.md)"),
        Line2D([], [], color=charts.COLORS["muted"], ls="--", label="1x: the baseline's rate"),
    ], loc="upper center", bbox_to_anchor=(0.4, -0.09), ncol=5, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    charts.save(fig, path)


def main(argv: Sequence[str]) -> int:
    """Redraw the chart from its JSON: `python benchmarks/report.py [results.json]`."""
    data = Path(argv[0]) if argv else ROOT / "benchmarks" / "results.json"
    ratios, title = read_chart_data(data)
    chart = data.with_suffix(".png")
    write_chart(chart, ratios, title)
    print(f"wrote {chart} from {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
