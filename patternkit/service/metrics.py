"""One fact, one counter: metrics declared once, shown on `/metrics` and read back for `/stats`.

`Metrics.counter` / `gauge` declare a prometheus_client metric on the service's registry with
its known label values created at zero (so every series is on `/metrics` from start-up, as
Prometheus advises for labels you know), and optionally a `stat` path: `/stats` shows the
metric's current value there, read from the same registry. A labelled metric shows as a dict
per label value (nested in label order), or, with `total=True`, as the sum over its labels;
a path naming labels (`"stages.{stage}.failures"`) puts each value there, summed over the
labels it does not name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, ClassVar, get_args, get_origin, get_type_hints

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

Labels = Mapping[str, Iterable[str]]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _put(out: dict[str, Any], path: Iterable[str], value: Any) -> None:
    *parents, last = path
    for key in parents:
        out = out.setdefault(key, {})
    out[last] = value


def merge(into: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `into`, dicts key by key (for static facts next to counters)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


class Metrics:
    """A service's Prometheus registry and the `/stats` view read back from it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._views: list[tuple[tuple[str, ...], Callable[[], Any]]] = []
        # stat paths naming labels, e.g. "stages.{stage}.failures": summed over the others
        self._templates: list[tuple[str, MetricWrapperBase, str]] = []

    def _declare(
        self, metric: MetricWrapperBase, sample: str, labels: Labels | None,
        stat: str | None, total: bool,
    ) -> None:
        names = list(labels or {})
        if labels:
            for values in itertools.product(*(list(v) for v in labels.values())):
                metric.labels(*values)
        if stat is not None and "{" in stat:
            self._templates.append((stat, metric, sample))
        elif stat is not None:
            self._views.append((tuple(stat.split(".")), self._reader(metric, sample, names, total)))

    @staticmethod
    def _reader(
        metric: MetricWrapperBase, sample: str, names: list[str], total: bool
    ) -> Callable[[], Any]:
        def read() -> Any:
            samples = [s for m in metric.collect() for s in m.samples if s.name == sample]
            if not names:
                return _number(samples[0].value) if samples else 0
            if total:
                return _number(sum(s.value for s in samples))
            out: dict[str, Any] = {}
            for s in samples:
                _put(out, [s.labels[n] for n in names], _number(s.value))
            return out

        return read

    def counter(
        self, name: str, doc: str, labels: Labels | None = None, *,
        stat: str | None = None, total: bool = False,
    ) -> Counter:
        """A Counter; `labels` maps each label name to its known values (created at zero)."""
        metric = Counter(name, doc, list(labels or {}), registry=self.registry)
        self._declare(metric, name.removesuffix("_total") + "_total", labels, stat, total)
        return metric

    def gauge(
        self, name: str, doc: str, labels: Labels | None = None, *,
        stat: str | None = None, total: bool = False,
    ) -> Gauge:
        """A Gauge; `labels` as for `counter`."""
        metric = Gauge(name, doc, list(labels or {}), registry=self.registry)
        self._declare(metric, name, labels, stat, total)
        return metric

    def histogram(
        self, name: str, doc: str, labels: Labels | None = None,
        buckets: Iterable[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        """A Histogram with its known label values created (no `/stats` view)."""
        metric = Histogram(name, doc, list(labels or {}), registry=self.registry,
                           buckets=tuple(buckets))
        self._declare(metric, name, labels, None, False)
        return metric

    def view(self, stat: str, child: Counter | Gauge) -> None:
        """Show one labelled child (e.g. `calls.labels("stage1")`) at the `stat` path."""
        self._views.append((tuple(stat.split(".")), lambda: _number(child._value.get())))

    def computed(self, stat: str, read: Callable[[], Any]) -> None:
        """Show what `read()` returns at the `stat` path, read on every /stats (e.g. a
        `PredictionLog.stats`, whose counts are on this registry already)."""
        self._views.append((tuple(stat.split(".")), read))

    def stats(self) -> dict[str, Any]:
        """Every declared `stat`, read now from the registry, nested by its dotted path."""
        out: dict[str, Any] = {}
        for path, read in self._views:
            _put(out, path, read())
        for template, metric, sample in self._templates:
            sums: dict[str, float] = {}
            for m in metric.collect():
                for s in m.samples:
                    if s.name == sample:
                        key = template.format(**s.labels)
                        sums[key] = sums.get(key, 0.0) + s.value
            for key, value in sums.items():
                _put(out, key.split("."), _number(value))
        return out


class CounterSet:
    """A service's plain counts as typed attributes, each a Counter declared once.

    Subclass it with a `PREFIX` and fields `name: Annotated[Counter, "doc"]`; `Sub(metrics)`
    declares `{PREFIX}_{name}` on the registry with `/stats` at `name`, so a route writes
    `counts.writes.inc()` and /stats and /metrics show the same number.
    """

    PREFIX: ClassVar[str] = ""

    def __init__(self, metrics: Metrics) -> None:
        for name, hint in get_type_hints(type(self), include_extras=True).items():
            if get_origin(hint) is Annotated:
                _, doc = get_args(hint)[:2]
                setattr(self, name, metrics.counter(f"{self.PREFIX}_{name}", str(doc), stat=name))
