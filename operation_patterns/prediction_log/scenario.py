"""Demo traffic for O4, with counts: what was sent, stored, stored twice and dropped.

Four episodes on the running stack, each counted in the log DB by request id:
1. N requests with a client event each: N latency, N prediction and N event rows that join.
2. The consumer stopped for the middle 500 of 1,000 requests: all 1,000 stored after its
   restart, none twice, and the request p99 while it was down against while it was up.
3. Redis stopped for a while: the records wait in each service's spool and are drained when
   it is back; nothing dropped.
4. The same with a spool of SPOOL_BOUND: exactly what exceeded it is dropped, the metric says
   so, the first SPOOL_BOUND records are the ones stored; under sustained bulky traffic the
   predictor's memory stays flat.
The tests call the same episodes and assert on what they return. While the demo runs, a
sampler polls the spools and the consumer's lag four times a second; `prediction_log.png`
draws them, with the outages shaded.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
import sqlalchemy as sa

from operation_patterns.prediction_log.proxy import LOG_TABLE, TABLE_PREFIX
from patternkit import charts
from patternkit.client import IRIS_ROWS, Client, LatencyStats, wait_until
from patternkit.db import make_engine
from patternkit.topology import Stack

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PICTURE = "prediction_log.png"
GROUP = "log-consumer"  # the consumer's CONSUMER_GROUP
PREFIX = TABLE_PREFIX
TABLE = LOG_TABLE
BODY = {"data": [IRIS_ROWS[2][0]]}
SPOOL_BOUND = 100
BULK_ROWS = 500
_runs = itertools.count(1)


def run_tag(what: str) -> str:
    """A request-id prefix no earlier episode of this stack used."""
    return f"{what}-{int(time.time() * 1000) % 10**8}-{next(_runs)}"


@contextmanager
def log_db(stack: Stack) -> Iterator[sa.Engine]:
    engine = make_engine(stack.url("db"))
    try:
        yield engine
    finally:
        engine.dispose()


def counts(engine: sa.Engine, tag: str) -> dict[str, dict[str, int]]:
    """Per kind, the rows of request ids starting `tag-` and how many distinct ids they hold."""
    t = TABLE
    stmt = (sa.select(t.c.kind, sa.func.count(), sa.func.count(sa.distinct(t.c.request_id)))
            .where(t.c.request_id.like(f"{tag}-%")).group_by(t.c.kind))
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return {}
        return {kind: {"rows": rows, "ids": ids} for kind, rows, ids in conn.execute(stmt)}


def stored_ids(engine: sa.Engine, tag: str, service: str | None = None) -> list[str]:
    """The request ids of `tag` stored (for one service), a row each, sorted."""
    t = TABLE
    stmt = sa.select(t.c.request_id).where(t.c.request_id.like(f"{tag}-%"))
    if service is not None:
        stmt = stmt.where(t.c.service == service)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return []
        return sorted(conn.execute(stmt).scalars())


def wait_stored(engine: sa.Engine, tag: str, want: dict[str, int], timeout: float = 30.0
                ) -> dict[str, dict[str, int]]:
    """Until the rows of `tag` per kind reach `want` (then a short settle for late doubles)."""
    def done() -> dict[str, dict[str, int]] | None:
        found = counts(engine, tag)
        ok = all(found.get(k, {}).get("rows", 0) >= n for k, n in want.items())
        return found if ok else None

    wait_until(done, timeout, 0.1, f"{want} rows of {tag}")
    return counts(engine, tag)


def send(client: Client, tag: str, ids: Sequence[int], body: object = BODY) -> LatencyStats:
    """POST /predict once per id (request id `tag-i`); raises on anything but a 200."""
    lat = LatencyStats()
    for i in ids:
        resp, ms = client.timed("POST", "/predict", json=body,
                                headers={"x-request-id": f"{tag}-{i:05d}"})
        if resp.status_code != 200:
            raise AssertionError(f"{tag}-{i}: {resp.status_code} {resp.text[:200]}")
        lat.add(ms)
    return lat


def quiet(stack: Stack, timeout: float = 30.0) -> None:
    """Until every spool is empty and the consumer has stored and acked all it was given."""
    def done() -> bool:
        try:
            spools = [httpx.get(f"{stack.url(s)}/stats", timeout=2).json()["prediction_log"]
                      for s in ("proxy", "predictor")]
            consumer = httpx.get(f"{stack.url('consumer')}/stats", timeout=2).json()
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return (all(s["buffered"] == 0 for s in spools) and consumer["lag"] == 0
                and consumer["pending"] == 0 and consumer["redis_ok"])

    wait_until(done, timeout, 0.1, "empty spools and a caught-up consumer")


def spool(stack: Stack, service: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{stack.url(service)}/stats", timeout=5).json()
    return dict(stats["prediction_log"])


def metric(stack: Stack, service: str, line_start: str) -> float:
    text = httpx.get(f"{stack.url(service)}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith(line_start + " "))
    return float(line.split()[-1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def down(sampler: Sampler | None, label: str) -> Iterator[None]:
    """The demo's sampler shades this span as `label`; nothing without one (the tests)."""
    if sampler is None:
        yield
        return
    with sampler.span(label):
        yield


def count_line(**values: object) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


# -- the episodes --------------------------------------------------------------------------


def joined(stack: Stack, n: int = 50) -> dict[str, Any]:
    """N requests, a client event each: N rows of each kind, joined by request id."""
    tag = run_tag("join")
    with Client(stack.url()) as proxy, log_db(stack) as engine:
        lat = send(proxy, tag, range(n))
        for i in range(n):
            resp = proxy.post("/events", json={"request_id": f"{tag}-{i:05d}",
                                               "event": "purchase", "value": float(i)})
            assert resp.status_code == 202, resp.text
        found = wait_stored(engine, tag, {"latency": n, "prediction": n, "event.purchase": n})
    with Client(stack.url("consumer")) as consumer:
        one = consumer.get("/logs", params={"request_id": f"{tag}-00007"}).json()
    stored = sum(k["rows"] for k in found.values())
    return {"tag": tag, "sent": n, "counts": found, "stored": stored,
            "duplicated": stored - sum(k["ids"] for k in found.values()),
            "p99_ms": lat.percentile(99), "one": one}


def consumer_outage(stack: Stack, n: int = 1000, sampler: Sampler | None = None
                    ) -> dict[str, Any]:
    """The consumer stopped for the middle half of `n` requests, then started again."""
    tag = run_tag("outage")
    quarter = n // 4
    with Client(stack.url()) as proxy, log_db(stack) as engine:
        up = send(proxy, tag, range(quarter))
        with down(sampler, "consumer down"):
            stack.stop_service("consumer")
            try:
                lat_down = send(proxy, tag, range(quarter, n - quarter))
                middle = {f"{tag}-{i:05d}" for i in range(quarter, n - quarter)}
                waiting = sum(1 for rid in stored_ids(engine, tag) if rid in middle)
            finally:
                stack.start_service("consumer")
        up2 = send(proxy, tag, range(n - quarter, n))
        found = wait_stored(engine, tag, {"latency": n, "prediction": n})
    up.samples += up2.samples
    stored = sum(k["rows"] for k in found.values())
    dropped = sum(spool(stack, s)["dropped"] for s in ("proxy", "predictor"))
    return {"tag": tag, "sent": n, "counts": found, "stored": stored,
            "duplicated": stored - sum(k["ids"] for k in found.values()),
            "dropped": dropped, "stored_while_down": waiting,
            "p99_up_ms": up.percentile(99), "p99_down_ms": lat_down.percentile(99)}


def redis_outage(stack: Stack, n: int = 300, sampler: Sampler | None = None
                 ) -> dict[str, Any]:
    """Redis stopped for `n` requests: the records wait in the spools, drained after."""
    tag = run_tag("redis")
    quiet(stack)
    with Client(stack.url()) as proxy, log_db(stack) as engine:
        before = {s: spool(stack, s) for s in ("proxy", "predictor")}
        with down(sampler, "redis down"):
            stack.stop_service("redis")
            try:
                lat = send(proxy, tag, range(n))
                spooled = {s: spool(stack, s)["buffered"] for s in ("proxy", "predictor")}
                down_s = time.monotonic()
            finally:
                stack.start_service("redis")
        found = wait_stored(engine, tag, {"latency": n, "prediction": n})
        drained_s = time.monotonic() - down_s
    after = {s: spool(stack, s) for s in ("proxy", "predictor")}
    stored = sum(k["rows"] for k in found.values())
    return {"tag": tag, "sent": n, "counts": found, "stored": stored, "spooled": spooled,
            "duplicated": stored - sum(k["ids"] for k in found.values()),
            "dropped": sum(after[s]["dropped"] - before[s]["dropped"] for s in after),
            "write_errors": sum(after[s]["write_errors"] - before[s]["write_errors"]
                                for s in after),
            "p99_ms": lat.percentile(99), "drained_s": drained_s}


def spool_overflow(stack: Stack, n: int = 300, bound: int = SPOOL_BOUND,
                   bulk: int = 400, sampler: Sampler | None = None) -> dict[str, Any]:
    """Redis down with a spool of `bound`: `n` small requests through the proxy (each service
    drops exactly n - bound), then `bulk` requests of BULK_ROWS rows straight to the
    predictor while the predictor's RSS is sampled; restores the usual spool at the end."""
    tag = run_tag("spool")
    small = {"PREDICTION_LOG_BUFFER": str(bound)}
    quiet(stack)
    stack.restart("predictor", env=small)
    stack.restart("proxy", env=small)
    try:
        with Client(stack.url()) as proxy, Client(stack.url("predictor")) as predictor, \
                log_db(stack) as engine:
            with down(sampler, f"redis down, spool {bound}"):
                stack.stop_service("redis")
                try:
                    got = _overflow(stack, proxy, predictor, tag, n, bulk)
                finally:
                    stack.start_service("redis")
            wait_stored(engine, tag, {"latency": bound, "prediction": bound})
            quiet(stack)
            found = counts(engine, tag)
            first = [f"{tag}-{i:05d}" for i in range(bound)]
            kept = {s: stored_ids(engine, tag, s) == first for s in ("proxy", "predictor")}
            bulk_rows = counts(engine, f"{tag}bulk")
    finally:
        usual = {"PREDICTION_LOG_BUFFER": "10000"}
        stack.restart("proxy", env=usual)
        stack.restart("predictor", env=usual)
    return {**got, "tag": tag, "sent": n, "bound": bound, "counts": found,
            "stored": sum(k["rows"] for k in found.values()),
            "duplicated": sum(k["rows"] - k["ids"] for k in found.values()),
            "first_kept": kept, "bulk": bulk, "bulk_stored": bulk_rows}


def _overflow(stack: Stack, proxy: Client, predictor: Client, tag: str, n: int, bulk: int
              ) -> dict[str, Any]:
    """With Redis down: `n` small requests, then `bulk` bulky ones with the RSS sampled."""
    bulky = {"data": [IRIS_ROWS[i % 3][0] for i in range(BULK_ROWS)]}
    send(proxy, tag, range(n))
    spooled = {s: spool(stack, s) for s in ("proxy", "predictor")}
    popen = stack.proc("predictor").popen
    assert popen is not None
    warm = max(bulk // 8, 1)
    send(predictor, f"{tag}bulk", range(warm), bulky)
    rss_full = rss_kb(popen.pid)
    send(predictor, f"{tag}bulk", range(warm, bulk), bulky)
    rss_end = rss_kb(popen.pid)
    dropped = 'prediction_log_dropped_total{reason="buffer_full"}'
    metrics = {s: metric(stack, s, dropped) for s in ("proxy", "predictor")}
    stats = {s: spool(stack, s)["dropped"] for s in ("proxy", "predictor")}
    record_kb = 3 * len(str(bulky)) / 1024  # its rows in, and labels and probabilities out
    return {"spooled": spooled, "dropped_metric": metrics, "dropped_stats": stats,
            "rss_full_kb": rss_full, "rss_end_kb": rss_end,
            "would_be_kb": round((bulk - warm) * record_kb)}


@dataclass
class Timeline:
    """What the sampler saw: per sample (seconds since start) the spools' depth, their drops
    and the consumer's lag (None: it did not answer); the outages as (label, start, end)."""

    t: list[float] = field(default_factory=list)
    buffered: dict[str, list[float | None]] = field(
        default_factory=lambda: {"proxy": [], "predictor": []})
    dropped: dict[str, list[float | None]] = field(
        default_factory=lambda: {"proxy": [], "predictor": []})
    lag: list[float | None] = field(default_factory=list)
    spans: list[tuple[str, float, float]] = field(default_factory=list)


class Sampler:
    """A thread polling /stats of the proxy, the predictor and the consumer every `every` s."""

    def __init__(self, stack: Stack, every: float = 0.25) -> None:
        self.stack = stack
        self.every = every
        self.timeline = Timeline()
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="o4-sampler")

    def now(self) -> float:
        return time.monotonic() - self.began

    def _stats(self, http: httpx.Client, service: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = http.get(f"{self.stack.url(service)}/stats").json()
            return body
        except (httpx.HTTPError, ValueError):
            return None

    def _lag(self, rds: redis.Redis) -> float | None:
        """Entries after the group's last delivered id, read from Redis itself (so it is
        known while the consumer is down); None while Redis is."""
        try:
            groups: Any = rds.xinfo_groups(TABLE.name)
            last = next(g["last-delivered-id"] for g in groups if g["name"] == GROUP.encode())
            newer: Any = rds.xrange(TABLE.name, min=b"(" + last, max="+", count=100_000)
            return float(len(newer))
        except (redis.RedisError, OSError, StopIteration):
            return None

    def _poll(self) -> None:
        tl = self.timeline
        rds = redis.Redis.from_url(self.stack.url("redis"), socket_timeout=0.5,
                                   socket_connect_timeout=0.5)
        with httpx.Client(timeout=1.0) as http, rds:
            while not self._stop.wait(self.every):
                tl.t.append(self.now())
                for service in ("proxy", "predictor"):
                    found = self._stats(http, service)
                    spool_now = found.get("prediction_log") if found else None
                    tl.buffered[service].append(spool_now["buffered"] if spool_now else None)
                    tl.dropped[service].append(spool_now["dropped"] if spool_now else None)
                tl.lag.append(self._lag(rds))

    @contextmanager
    def span(self, label: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.timeline.spans.append((label, start, self.now()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def draw(tl: Timeline) -> Figure:
    """Top: the consumer's lag (entries not yet delivered); bottom: each spool's depth and
    what it dropped. The outages are shaded."""
    fig, (lag_ax, spool_ax) = charts.figure(
        "O4 prediction log: what waits where while a part is down", heights=(2.2, 2.6))
    shades = {"consumer down": charts.COLORS["breaker_open"], "redis down": charts.COLORS["error"],
              "redis down, spool 100": charts.COLORS["miss"]}
    for ax in (lag_ax, spool_ax):
        for label, start, end in tl.spans:
            ax.axvspan(start, end, color=shades.get(label, charts.COLORS["muted"]), alpha=0.12)
    for label, start, end in tl.spans:
        lag_ax.annotate(label, ((start + end) / 2, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7)
    lag_ax.plot(tl.t, [float("nan") if v is None else v for v in tl.lag],
                color=charts.COLORS["answer"], lw=1.6,
                label="stream entries not yet delivered to the group (gap: Redis down)")
    lag_ax.set_ylabel("consumer lag\n(entries)", fontsize=8)
    lag_ax.legend(fontsize=7, loc="upper left")
    colors = {"proxy": charts.COLORS["answer"], "predictor": charts.COLORS["hit"]}
    for service, color in colors.items():
        spool_ax.plot(tl.t, [float("nan") if v is None else v for v in tl.buffered[service]],
                      color=color, lw=1.6, label=f"{service}: records in the spool")
        spool_ax.plot(tl.t, [float("nan") if v is None else v for v in tl.dropped[service]],
                      color=color, lw=1.2, ls="--", label=f"{service}: dropped (total)")
    spool_ax.set_ylabel("records", fontsize=8)
    spool_ax.set_xlabel("seconds into the demo", fontsize=8)
    spool_ax.legend(fontsize=7, loc="upper left", ncol=2)
    return fig


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    """The demo: its table rows; the picture goes to `out` (the run directory by default)."""
    with Sampler(stack) as sampler:
        rows = episodes(stack, sampler)
    charts.picture((out or stack.run_dir) / PICTURE, lambda: draw(sampler.timeline))
    return rows


def episodes(stack: Stack, sampler: Sampler | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    j = joined(stack)
    rows.append({"step": f"{j['sent']} requests + a purchase event each",
                 "observed": count_line(sent=j["sent"], stored=j["stored"],
                                        duplicated=j["duplicated"], dropped=0)
                 + "; rows by kind " + ", ".join(f"{k} {v['rows']}"
                                                 for k, v in sorted(j["counts"].items()))})
    one = j["one"]
    rows.append({"step": "GET /logs?request_id=" + one["request_id"],
                 "observed": f"{one['count']} rows: {', '.join(one['kinds'])}"})
    c = consumer_outage(stack, sampler=sampler)
    rows.append({"step": "consumer stopped for the middle 500 of 1,000",
                 "observed": count_line(sent=c["sent"], stored=c["stored"],
                                        duplicated=c["duplicated"], dropped=c["dropped"])
                 + f" ({c['counts']['latency']['rows']} latency + "
                   f"{c['counts']['prediction']['rows']} prediction rows; rows of the middle "
                   f"500 stored while it was down: {c['stored_while_down']})"})
    rows.append({"step": "request p99, consumer up | down",
                 "observed": f"{c['p99_up_ms']:.1f} ms | {c['p99_down_ms']:.1f} ms"})
    r = redis_outage(stack, sampler=sampler)
    rows.append({"step": f"Redis stopped for {r['sent']} requests",
                 "observed": count_line(sent=r["sent"], stored=r["stored"],
                                        duplicated=r["duplicated"], dropped=r["dropped"])
                 + f"; spooled {r['spooled']}, drained {r['drained_s']:.1f}s after Redis "
                   f"returned; p99 {r['p99_ms']:.1f} ms"})
    s = spool_overflow(stack, sampler=sampler)
    over = {k: v["dropped"] for k, v in s["spooled"].items()}
    rows.append({"step": f"Redis stopped, spool of {s['bound']}, {s['sent']} requests",
                 "observed": count_line(sent=s["sent"], stored=s["stored"],
                                        duplicated=s["duplicated"], dropped=sum(over.values()))
                 + f" (by service {over}); stored: the first {s['bound']} ids of each "
                   f"{all(s['first_kept'].values())}"})
    rows.append({"step": f"{s['bulk']} requests of {BULK_ROWS} rows, Redis still down",
                 "observed": f"predictor RSS {s['rss_full_kb'] / 1024:.1f} MB with the spool "
                             f"full -> {s['rss_end_kb'] / 1024:.1f} MB after "
                             f"{s['bulk']} more (unbounded: +{s['would_be_kb'] / 1024:.0f} MB "
                             f"of records at least); dropped_total metric now "
                             f"{s['dropped_metric']}"})
    return rows
