"""A pipeline declared as data: steps, their upstreams, checked before anything runs.

`Dag.declare(steps)` refuses a declaration with a step named twice, an upstream that is not
declared, or a cycle (found by the standard library's `graphlib`), with a `DagError` that
names the steps; a valid one knows its topological order and what lies downstream of a step.
T2's orchestrator dispatches from it, and TA3's "clean" pipeline is the same idea set
against a tangled one.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from dataclasses import dataclass, field


class DagError(ValueError):
    """A declaration that cannot run: duplicate steps, missing upstreams, or a cycle."""

    def __init__(self, message: str, problem: str, steps: list[str]) -> None:
        super().__init__(message)
        self.problem = problem  # duplicate | missing_upstream | cycle
        self.steps = steps


@dataclass(frozen=True)
class Step:
    """One step: its name, the queue its worker listens on, the steps whose output it reads,
    and whether it runs every time (DVC's `always_changed`) instead of being restored."""

    name: str
    upstream: tuple[str, ...] = ()
    queue: str = ""
    always_run: bool = False

    @property
    def queue_name(self) -> str:
        return self.queue or self.name


@dataclass(frozen=True)
class Dag:
    """A validated declaration (build it with `Dag.declare`)."""

    steps: dict[str, Step]
    order: tuple[str, ...]
    _downstream: dict[str, tuple[str, ...]] = field(repr=False)

    @classmethod
    def declare(cls, steps: Iterable[Step]) -> Dag:
        listed = list(steps)
        names = [s.name for s in listed]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DagError(f"steps declared twice: {', '.join(twice)}", "duplicate", twice)
        by_name = {s.name: s for s in listed}
        missing = sorted({f"{s.name} <- {u}" for s in listed for u in s.upstream
                          if u not in by_name})
        if missing:
            raise DagError(f"upstream steps not declared: {', '.join(missing)}",
                           "missing_upstream", missing)
        sorter = graphlib.TopologicalSorter({s.name: s.upstream for s in listed})
        try:
            order = tuple(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = [str(n) for n in exc.args[1]]
            raise DagError(f"the steps form a cycle: {' -> '.join(cycle)}", "cycle",
                           cycle) from None
        downstream: dict[str, set[str]] = {s.name: set() for s in listed}
        for name in reversed(order):  # a step's downstream: its children and theirs
            for up in by_name[name].upstream:
                downstream[up] |= {name} | downstream[name]
        return cls(by_name, order,
                   {k: tuple(n for n in order if n in v) for k, v in downstream.items()})

    def downstream(self, name: str) -> tuple[str, ...]:
        """Every step that reads `name`'s output, directly or not, in run order."""
        return self._downstream[name]

    def upstream(self, name: str) -> tuple[str, ...]:
        return self.steps[name].upstream

    def describe(self) -> list[dict[str, object]]:
        return [{"step": n, "upstream": list(self.steps[n].upstream),
                 "queue": self.steps[n].queue_name, "always_run": self.steps[n].always_run}
                for n in self.order]
