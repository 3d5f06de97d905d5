"""What both TA3 pipelines record while they run: one `StepRecord` per step they started,
the stores each step touched (and whether the read worked), and the run's report.

`steps_to_find` is the debugging walk the README's "time to find" counts: start at the step
the run reported last as failed (its alert), open it; if its error names another step's
file, open that step next (or, if it never ran, the step its job stopped at), else the step
before it in the same job; stop at the step whose read of a store failed. It counts the steps
opened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

DONE, FAILED, SKIPPED = "done", "failed", "skipped"
FILE_OF_STEP = re.compile(r"/(?P<job>[abc])/(?P<step>gather|prep|train|evaluate|build)/")


@dataclass
class StepRecord:
    job: str
    step: str
    state: str = DONE
    error: str | None = None
    touched: dict[str, bool] = field(default_factory=dict)  # store -> read worked
    duration_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.step}_{self.job}"


@dataclass
class RunLog:
    pipeline: str
    steps: list[StepRecord] = field(default_factory=list)
    current: StepRecord | None = None

    @contextmanager
    def step(self, job: str, step: str) -> Iterator[StepRecord]:
        record = StepRecord(job, step)
        self.steps.append(record)
        self.current = record
        t0 = time.perf_counter()
        try:
            yield record
        except Exception as exc:
            record.state, record.error = FAILED, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.duration_s = round(time.perf_counter() - t0, 4)
            self.current = None

    def skipped(self, job: str, step: str, why: str) -> None:
        self.steps.append(StepRecord(job, step, SKIPPED, why))

    def touch(self, store: str, ok: bool) -> None:
        if self.current is not None:
            self.current.touched[store] = ok

    def report(self, **extra: Any) -> dict[str, Any]:
        jobs = sorted({s.job for s in self.steps} | {"a", "b", "c"})
        failed_jobs = sorted({s.job for s in self.steps if s.state in (FAILED, SKIPPED)})
        ran = [s for s in self.steps if s.state != SKIPPED]
        return {
            "pipeline": self.pipeline,
            "state": "failed" if failed_jobs else "succeeded",
            "steps_executed": len(ran),
            "jobs": {j: "failed" if j in failed_jobs else "succeeded" for j in jobs},
            "jobs_failed": len(failed_jobs),
            "failed_steps": [s.name for s in self.steps if s.state == FAILED],
            "broken_stores": sorted({k for s in self.steps for k, ok in s.touched.items()
                                     if not ok}),
            "steps_to_find": steps_to_find(self.steps),
            "steps": [{"name": s.name, **asdict(s)} for s in self.steps],
            **extra,
        }


def steps_to_find(steps: list[StepRecord]) -> dict[str, Any] | None:
    """The steps a user opens, from the last reported failure back to the broken read."""
    failed = [s for s in steps if s.state == FAILED]
    if not failed:
        return None
    by_name = {s.name: s for s in steps}
    order = {s.name: i for i, s in enumerate(steps)}
    at: StepRecord | None = failed[-1]
    opened: list[str] = []
    while at is not None and at.name not in opened:
        opened.append(at.name)
        if not all(at.touched.values()):
            return {"steps": len(opened), "opened": opened, "root": at.name}
        named = FILE_OF_STEP.search(at.error or "")
        if named:  # a file another step should have made: that step, or where its job stopped
            job_steps = [s for s in steps if s.job == named["job"]]
            at = by_name.get(f"{named['step']}_{named['job']}") or (
                job_steps[-1] if job_steps else None)
            continue
        before = [s for s in steps if s.job == at.job and order[s.name] < order[at.name]]
        at = before[-1] if before else None
    return {"steps": len(opened), "opened": opened, "root": None}
