"""Pictures for the demos: matplotlib figures set up, drawn and saved as PNG in one house style.

A scenario draws what a table tells badly (a breaker's state over time, two latency
distributions) into its run directory, and `make demo` names the file; `python -m patternkit
demo PATTERN --save-pictures` also copies it into the pattern folder, the copy its README links.
matplotlib (the `bench` extra) is imported inside these functions on the Agg backend, so no
service imports it and no display is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# one meaning, one colour, in every picture (colour-blind safe: matplotlib's "tab" colours)
COLORS = {
    "answer": "#1f77b4",  # a real answer, or a bar with no target
    "hit": "#2ca02c",
    "miss": "#ff7f0e",
    "fallback": "#ff7f0e",
    "breaker_open": "#9467bd",
    "error": "#d62728",
    "closed": "#2ca02c",
    "half_open": "#e6b800",
    "open": "#d62728",
    "muted": "#7f7f7f",
}
DPI = 110

log = logging.getLogger(__name__)


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed, so no picture can be drawn."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), imported on first use."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ChartsUnavailable(
            "matplotlib is not installed (the bench extra: pip install '.[bench]'; "
            "`make` installs it)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(
    title: str, heights: Sequence[float] = (1.0,), width: float = 10.0, sharex: bool = True
) -> tuple[Figure, list[Axes]]:
    """A figure of stacked panels (`heights` in inches), the title on top, light grids."""
    plt = pyplot()
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(width, sum(heights) + 0.9), sharex=sharex, squeeze=False,
        gridspec_kw={"height_ratios": list(heights)},
    )
    panels: list[Axes] = list(axes[:, 0])
    fig.suptitle(title, fontsize=11)
    for ax in panels:
        ax.grid(True, which="major", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=8)
    return fig, panels


def save(fig: Figure, path: Path) -> Path:
    """Lay out, write `path` as PNG, free the figure; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def picture(path: Path, draw: Callable[[], Figure]) -> Path | None:
    """The figure `draw()` makes, saved at `path`; None, with a log line saying why, when
    matplotlib is missing (a demo's checks still count without their picture)."""
    try:
        return save(draw(), path)
    except ChartsUnavailable as exc:
        log.warning("no picture %s: %s", path.name, exc)
        return None


def ecdf(ax: Axes, values: Sequence[float], label: str, color: str) -> None:
    """The empirical CDF of `values` as a step line: the share of them at or below x."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return
    shares = [(i + 1) / n for i in range(n)]
    ax.step([ordered[0], *ordered], [0.0, *shares], where="post", color=color, lw=2,
            label=label)


def log_scale(ax: Axes, which: str = "x") -> None:
    """A log scale on the x (or y) axis of `ax`, labelled 1, 10, 100 rather than 10^n."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    if which == "x":
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)


def log_limits(
    values: Sequence[float], pad: float = 1.6, decades: bool = False
) -> tuple[float, float]:
    """Limits of a log axis that hold every positive value with a margin each side; with
    `decades`, widened to powers of ten, so each end has a labelled tick."""
    positive = [v for v in values if v > 0] or [1.0]
    low, high = min(positive) / pad, max(positive) * pad
    if decades:
        low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
    return low, high
