"""Pattern benchmark: what each serving pattern costs against the predictor, in one run.

Boots S1, S6, S7, S8, S3 and S4 (and a bare FastAPI app) through `patternkit.topology.Stack`
(see benchmarks/targets.py), then measures every row interleaved over rounds with one load
generator (wrk, else locust): req/s, p50, p99 and the ratio to the template predictor called
directly in the same round; S4 is a batch job's rows/s against onnxruntime's own. Prints
progress and the table, and writes results.md and results.png (benchmarks/report.py).

    python benchmarks/patterns.py [--rounds 3] [--seconds 5] [--connections 16] [--tool locust]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import batchjob, report  # noqa: E402
from benchmarks.loadgen import (  # noqa: E402
    VARY_TEMPLATE,
    choose_tool,
    cpus,
    pin_servers,
    run_load,
    server_cpus,
    tool_version,
)
from benchmarks.targets import BATCH, SHORT, Target, all_targets, stack_specs  # noqa: E402
from patternkit.client import format_table  # noqa: E402
from patternkit.topology import Stack  # noqa: E402

THRESHOLDS = {"S1": 0.45, "S8-hit": 1.0, "S4": 0.5}  # ratio bars of PERFORMANCE.md
CACHE_ROWS = ("S8-hit", "S8-miss")


@dataclass(frozen=True)
class Sample:
    key: str
    round: int
    rate: float
    p50: float | None = None
    p99: float | None = None
    errors: int = 0
    requests: int = 0


@dataclass(frozen=True)
class Median:
    rate: float | None
    p50: float | None
    p99: float | None
    ratio: float | None  # the median of the per-round ratios to the baseline
    errors: int
    added_p50: float | None = None  # the median of the per-round p50 minus the baseline's


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per row")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tool", choices=("auto", "wrk", "locust"), default="auto")
    parser.add_argument(
        "--pin", choices=("load", "servers"), default="load",
        help="load: only the load generator gets CPU 0 and the servers share every CPU, as "
             "processes of one machine do (default); servers: the servers are confined to the "
             "other CPUs, so a pattern's processes split one CPU between them",
    )
    parser.add_argument("--batch-rows", type=int, default=5000, help="rows per S4 job")
    parser.add_argument("--chunk-size", type=int, default=100, help="S4 CHUNK_SIZE")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare FastAPI app")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. S1,S8,bare "
                        "(the direct predictor always runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md",
                        help="the markdown report; the chart goes beside it (.png)")
    return parser.parse_args()


def selected(args: argparse.Namespace) -> list[Target]:
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}

    def keep(t: Target) -> bool:
        if t.key == "bare":
            return not args.no_bare and (not wanted or "bare" in wanted)
        if t.key == "ort":
            return not wanted or "S4" in wanted
        return t.pattern == "-" or not wanted or t.pattern in wanted

    return [t for t in all_targets(args.connections, args.chunk_size, args.batch_rows)
            if keep(t)]


def boot(running: ExitStack, targets: list[Target], chunk_size: int,
         run_root: Path) -> dict[str, Stack]:
    specs = stack_specs(chunk_size)
    stacks: dict[str, Stack] = {}
    for name in dict.fromkeys(t.stack for t in targets):
        spec, began = specs[name], time.monotonic()
        print(f"booting {spec.title} ...", end=" ", flush=True)
        topology = str(ROOT / spec.topology) if isinstance(spec.topology, str) else (
            spec.topology())
        stacks[name] = running.enter_context(Stack(topology, run_root / name, env=spec.env))
        print(f"ready in {time.monotonic() - began:.1f}s", flush=True)
    return stacks


def prime(target: Target, url: str) -> None:
    """Two requests per row before the rounds: they must answer 2xx (and a HIT must hit)."""
    body = VARY_TEMPLATE % (0, 0) if target.load.vary else target.load.body
    for _ in range(2):
        reply = httpx.post(url + target.load.path, content=body, timeout=30,
                           headers={"content-type": "application/json"})
        if reply.status_code >= 300:
            raise SystemExit(f"{target.key}: {url} answered {reply.status_code}: "
                             f"{reply.text[:300]}")
    if target.key == "S8-hit" and reply.headers.get("x-cache") != "HIT":
        raise SystemExit(f"S8: the second identical request was no HIT: {reply.headers}")


def cache_counts(url: str) -> tuple[int, int]:
    """(hits, misses) from the S8 proxy's /stats."""
    stats = httpx.get(url + "/stats", timeout=5).raise_for_status().json()
    cache = stats.get("cache", stats)
    return int(cache["hits"]), int(cache["misses"])


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarize(targets: list[Target], samples: list[Sample]) -> dict[str, Median]:
    by_key: dict[str, list[Sample]] = {t.key: [] for t in targets}
    for s in samples:
        by_key[s.key].append(s)
    med: dict[str, Median] = {}
    for t in targets:
        got = by_key[t.key]
        ratio = added = None
        if t.baseline in by_key:
            base = {s.round: s for s in by_key[t.baseline]}
            ratio = median([s.rate / base[s.round].rate for s in got
                            if s.round in base and base[s.round].rate])
            added = median([s.p50 - p50 for s in got if s.p50 is not None and s.round in base
                            and (p50 := base[s.round].p50) is not None])
        med[t.key] = Median(
            median([s.rate for s in got]), median([s.p50 for s in got if s.p50 is not None]),
            median([s.p99 for s in got if s.p99 is not None]), ratio,
            sum(s.errors for s in got), added)
    return med


def table(targets: list[Target], med: dict[str, Median]) -> list[dict[str, Any]]:
    conns = {t.key: t.conns for t in targets}
    rows = []
    for t in targets:
        m = med[t.key]
        ratio = m.ratio
        rows.append({
            "id": t.pattern, "path": t.label, "conns": t.conns,
            "rate": "-" if m.rate is None else f"{m.rate:,.0f} {t.unit}",
            "p50 ms": fmt(m.p50), "p99 ms": fmt(m.p99),
            "ratio": "baseline" if t.baseline is None else
                     "-" if ratio is None else report.ratio_text(ratio),
            "vs": "-" if t.baseline is None else SHORT.get(t.baseline, t.baseline) + (
                f" @{conns[t.baseline]}" if conns.get(t.baseline, "-") != "-" else ""),
            "errors": m.errors,
        })
    return rows


def judge_bars(med: dict[str, Median], connections: int) -> list[report.Bar]:
    """The bars of PERFORMANCE.md that this run measures."""
    bars: list[report.Bar] = []
    bare = med.get("bare")
    if bare and bare.ratio:  # odd rounds: the median of direct/bare is 1 / median(bare/direct)
        r = 1 / bare.ratio
        bars.append(report.Bar("the predictor >= 0.8x the bare FastAPI endpoint's req/s",
                               r >= 0.8, report.ratio_text(r)))
    one, hop = med.get("direct-1"), med.get("S1-1")
    if one and hop and hop.added_p50 is not None:
        bars.append(report.Bar(
            "a proxy hop adds < 1 ms at p50 at 1 connection (S1 lb vs the predictor direct)",
            hop.added_p50 < 1.0, f"{hop.added_p50:+.2f} ms, the median of the per-round "
            f"differences; medians: p50 {hop.p50:.2f} ms through the lb, {one.p50:.2f} direct"))
    for key, text in (
        ("S1", f"a one-hop pattern (S1) >= 0.45x the direct predictor's req/s at "
               f"{connections} connections"),
        ("S8-hit", "a cache HIT (S8) answers at >= the direct predictor's req/s"),
        ("S4", "batch rows/s (S4) >= 0.5x onnxruntime's own rows/s on that model"),
    ):
        m = med.get(key)
        if m and m.ratio is not None:
            bars.append(report.Bar(text, m.ratio >= THRESHOLDS[key], report.ratio_text(m.ratio)))
    jobs = med.get("S3")
    if jobs and jobs.rate is not None and jobs.p99 is not None:
        bars.append(report.Bar(
            "async enqueue (S3) >= 1,000 jobs/s accepted with p99 < 10 ms",
            jobs.rate >= 1000 and jobs.p99 < 10, f"{jobs.rate:,.0f} jobs/s, p99 {jobs.p99:.1f} ms"))
    return bars


class Bench:
    """One run: the booted stacks, the load generator and every sample taken so far."""

    def __init__(self, args: argparse.Namespace, targets: list[Target], stacks: dict[str, Stack],
                 tool: str, workdir: Path) -> None:
        self.args, self.targets, self.stacks, self.tool = args, targets, stacks, tool
        self.workdir = workdir
        self.urls = {t.key: stacks[t.stack].url(t.service) for t in targets
                     if t.key not in BATCH}
        self.samples: list[Sample] = []
        self.cache_seen = {key: [0, 0] for key in CACHE_ROWS}
        self.batch_rows = batchjob.make_rows(args.batch_rows, seed=0)

    def http(self, target: Target, rnd: int) -> None:
        args, url = self.args, self.urls[target.key]
        print(f"[round {rnd}/{args.rounds}] {target.pattern:>2} {target.label} "
              f"@{target.connections} ...", end=" ", flush=True)
        if args.warmup:
            run_load(self.tool, url, target.load, args.warmup, target.connections, self.workdir)
        before = cache_counts(url) if target.key in CACHE_ROWS else None
        r = run_load(self.tool, url, target.load, args.seconds, target.connections, self.workdir)
        if before is not None:
            after = cache_counts(url)
            for i in (0, 1):
                self.cache_seen[target.key][i] += after[i] - before[i]
        self.samples.append(Sample(target.key, rnd, r.rps, r.p50, r.p99, r.errors, r.requests))
        print(f"{r.rps:,.0f} {target.unit}, p50 {r.p50:.2f} ms, p99 {r.p99:.2f} ms"
              + (f", {r.errors} ERRORS" if r.errors else ""), flush=True)

    def batch(self, rnd: int) -> None:
        args, stack = self.args, self.stacks["batch"]
        print(f"[round {rnd}/{args.rounds}] S4 batch job of {args.batch_rows:,} rows, chunks "
              f"of {args.chunk_size}; onnxruntime ...", end=" ", flush=True)
        job = batchjob.run_job(stack.url(), self.batch_rows)
        with batchjob.pinned(server_cpus()):
            ort_rate = batchjob.onnxruntime_rows_per_s(
                stack.run_dir / "models" / "iris_lr", self.batch_rows, args.chunk_size)
        self.samples += [
            Sample("S4", rnd, job.rows_per_s, errors=len(self.batch_rows) - job.rows,
                   requests=job.rows),
            Sample("ort", rnd, ort_rate, requests=len(self.batch_rows)),
        ]
        print(f"{job.status}: {job.rows_per_s:,.0f} rows/s (took_s {job.took_s:.2f}); "
              f"onnxruntime {ort_rate:,.0f} rows/s", flush=True)

    def run(self) -> None:
        for target in self.targets:
            if target.key not in BATCH:
                prime(target, self.urls[target.key])
        for rnd in range(1, self.args.rounds + 1):
            for target in self.targets:
                if target.key not in BATCH:
                    self.http(target, rnd)
            if "S4" in (t.key for t in self.targets):
                self.batch(rnd)

    def notes(self) -> list[str]:
        keys = {s.key for s in self.samples}
        notes = []
        if "S8-hit" in keys:
            hits, misses = self.cache_seen["S8-hit"]
            notes.append(f"S8 HIT runs: {hits:,} cache hits, {misses:,} misses "
                         "(the proxy's /stats).")
        if "S8-miss" in keys:
            hits, misses = self.cache_seen["S8-miss"]
            notes.append(f"S8 MISS runs: {misses:,} cache misses, {hits:,} hits: no body "
                         "repeated (feature 3 a tag per load-generator call, feature 4 a "
                         "per-request counter).")
        if "S4" in keys:
            notes.append("S4: rows predicted over the job's own `took_s` (planning to its last "
                         "chunk: SQLite DWH, one Celery worker, `--pool=solo`). onnxruntime: "
                         "`session.run` on the same model.onnx, the same rows in the same "
                         "chunks, intra/inter-op threads 1, on the servers' CPU.")
        return notes


def rate_figure(target: Target, m: Median, base: Median | None, base_unit: str) -> str:
    """The medians behind a ratio: `2,732 vs 5,364 req/s`, `421 jobs/s vs 5,364 req/s`."""
    if m.rate is None or base is None or base.rate is None:
        return ""
    unit = "" if target.unit == base_unit else f" {target.unit}"
    return f"{m.rate:,.0f}{unit} vs {base.rate:,.0f} {base_unit}"


def write_results(bench: Bench, med: dict[str, Median], pinning: str, elapsed: float,
                  load_before: float | None) -> None:
    args, targets = bench.args, bench.targets
    summary, bars = table(targets, med), judge_bars(med, args.connections)
    title = "Pattern benchmark: each serving pattern against the predictor, one run"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = (f"{tool_version(bench.tool)}{', -t1' if bench.tool == 'wrk' else ''}, "
            f"{args.connections} connections (and 1)")
    header = [
        f"Measured {when} with `python benchmarks/patterns.py --rounds "
        f"{args.rounds} --seconds {args.seconds} --warmup {args.warmup} --connections "
        f"{args.connections} --tool {bench.tool}` (what `make bench` runs); the run took "
        f"{elapsed / 60:.1f} min.",
        "",
        f"- machine: {report.machine(len(cpus()) or os.cpu_count() or 0)}"
        + ("" if load_before is None else f"; 1-min load average {load_before:.1f} before the "
           "run (other work on the machine)"),
        f"- load generator: {load}; {pinning}",
        f"- method: {args.rounds} interleaved rounds; per row {args.warmup} s of warm-up, then "
        f"{args.seconds} s measured; one iris row per request. Figures are medians over the "
        "rounds; a ratio is the median of the row's per-round ratios to its baseline measured "
        "in the same round. Absolute numbers drift with the machine and its other load: "
        "compare ratios.",
        "- set-up: each pattern booted by `patternkit.topology.Stack` from its topology.toml, "
        "the simulated model delay (`DELAY_MS`) at 0 for the S6, S7 and S8 predictors and the "
        "S4 worker, so a figure is the pattern's own cost; S8 `CACHE_TTL_S=3600`; S3's worker "
        "keeps its 1 s per job (only accepting jobs is measured). The direct predictor is "
        "S1's first replica.",
    ]
    rounds = [
        {"round": s.round, "row": s.key, "rate": f"{s.rate:,.0f}", "p50 ms": fmt(s.p50),
         "p99 ms": fmt(s.p99), "requests": s.requests, "errors": s.errors}
        for s in bench.samples
    ]
    units = {t.key: t.unit for t in targets}
    ratios = [
        report.Ratio(f"{t.pattern} {t.label}".lstrip("- ")
                     + (" at 1 connection" if t.connections == 1 else ""),
                     m.ratio, SHORT.get(t.baseline, t.baseline), THRESHOLDS.get(t.key),
                     rate_figure(t, m, med.get(t.baseline), units.get(t.baseline, t.unit)))
        for t in targets if t.baseline and (m := med[t.key]).ratio is not None
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chart = args.out.with_suffix(".png")
    report.write_chart_data(args.out.with_suffix(".json"), ratios, f"{title}\n{when}; {load}")
    report.write_chart(chart, ratios, f"{title}\n{when}; {load}")
    report.write_markdown(args.out, title=title, header=header, summary=summary, bars=bars,
                          notes=bench.notes(), rounds=rounds, chart=chart)
    print("\n" + format_table(summary))
    print("\n" + "\n".join(bar.line().replace("**", "") for bar in bars))
    print(f"\nwrote {args.out}, {chart.name} and its data (.json); the run took "
          f"{elapsed / 60:.1f} min")


def main() -> int:
    args = parse_args()
    args.out = args.out.resolve()
    os.chdir(ROOT)  # the bare app's topology is resolved against the working directory
    tool = choose_tool(args.tool)
    started = time.monotonic()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    targets = selected(args)
    http_rows = sum(1 for t in targets if t.key not in BATCH)
    per_round = http_rows * (args.warmup + args.seconds + 0.3) + (
        5 if "S4" in (t.key for t in targets) else 0)
    print(f"pattern benchmark: {tool}; {len(targets)} rows, {args.rounds} rounds of "
          f"~{per_round:.0f} s, plus ~1 min to boot: about "
          f"{(args.rounds * per_round + 60) / 60:.0f} min", flush=True)
    run_root = ROOT / ".runs" / f"bench-{datetime.now():%Y%m%d-%H%M%S}"
    workdir = run_root / "load"
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as running:
        stacks = boot(running, targets, args.chunk_size, run_root)
        pinning = pin_servers(servers_too=args.pin == "servers")
        print(f"{pinning}; logs under {run_root}", flush=True)
        bench = Bench(args, targets, stacks, tool, workdir)
        bench.run()
        print("stopping the stacks ...", flush=True)
    write_results(bench, summarize(targets, bench.samples), pinning,
                  time.monotonic() - started, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
