"""T2's picture: runs drawn as timelines, one lane per step (the worker that handled it),
one bar per execution: ran, restored from the cache, failed; the grey lead-in is the time
the step's message waited in its queue. Drawn by the scenario from `GET /runs/{id}` and
`GET /runs/{id}/executions`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patternkit import charts

STEPS = ("gather", "prep", "train", "evaluate", "build")
OUTCOME_COLORS = {"ran": "#1f77b4", "restored": "#2ca02c", "failed": "#d62728"}


def timelines(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], path: Path
              ) -> Path | None:
    """`runs`: (title, the run's view, its executions) for each panel."""

    def draw() -> Any:
        fig, panels = charts.figure("pipeline runs: one lane per step worker, one bar per "
                                    "execution", heights=[1.6] * len(runs), sharex=False)
        for ax, (title, view, executions) in zip(panels, runs, strict=True):
            t0 = view["created_ts"]
            lanes = {s: i for i, s in enumerate(reversed(STEPS))}
            for ex in executions:
                y = lanes[ex["step"]]
                ax.barh(y, max(ex["finished_ts"] - ex["started_ts"], 0.01),
                        left=ex["started_ts"] - t0, height=0.6,
                        color=OUTCOME_COLORS[ex["outcome"]])
            for step in view["steps"]:  # the last wait in the queue of each step
                if step["queued_ts"] and step["started_ts"]:
                    ax.barh(lanes[step["step"]], step["started_ts"] - step["queued_ts"],
                            left=step["queued_ts"] - t0, height=0.25, color="#bbbbbb")
            ax.set_yticks(list(lanes.values()))
            workers = {s["step"]: s["worker"] or "-" for s in view["steps"]}
            ax.set_yticklabels([f"{s}  ({workers[s]})" for s in lanes], fontsize=7)
            ax.set_title(title, loc="left", fontsize=9)
            ax.set_xlabel("seconds since the run was submitted", fontsize=8)
        handles = [charts.pyplot().Rectangle((0, 0), 1, 1, color=c) for c in
                   (*OUTCOME_COLORS.values(), "#bbbbbb")]
        panels[0].legend(handles, [*OUTCOME_COLORS, "waited in queue"], fontsize=7,
                         loc="upper right", ncol=4)
        return fig

    return charts.picture(path, draw)
