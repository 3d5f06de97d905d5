"""Load generation for the benchmarks: wrk when installed, else locust's FastHttpUser (through
`patternkit.loadtest`, the runner of the loading test).

One call drives one URL for some seconds at some connections and returns req/s, p50, p99 and
the errors. The load generator runs on CPU 0 and `pin_servers` moves every process this one
started (servers, workers, redis) to the other CPUs, so on 2 cores they do not trade places.
A `Load` may ask for a distinct body on every request (a cache MISS): wrk through a Lua
counter, locust through a shared counter; a tag per call keeps bodies distinct across calls.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from patternkit.loadtest import runner as loadtest_runner
from patternkit.loadtest.stats import phase_stats

BODY = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
# A MISS body: feature 3 is the call's tag, feature 4 a per-request counter. Both are whole
# numbers below 2**24, so they stay distinct after the cache's float32 cast.
VARY_TEMPLATE = '{"data": [[5.1, 3.5, %d, %d]]}'
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_tags = itertools.count(1)


@dataclass(frozen=True)
class Load:
    """What each request is: `POST path` with `body`, or a distinct body each time (`vary`)."""

    path: str = "/predict"
    body: str = BODY
    vary: bool = False


@dataclass(frozen=True)
class Result:
    rps: float
    p50: float  # ms
    p99: float  # ms
    errors: int
    requests: int


def choose_tool(wanted: str = "auto") -> str:
    """`wrk` when asked for or installed, else `locust`."""
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "locust"
    if wanted == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), use --tool locust")
    return wanted


def tool_version(tool: str) -> str:
    if tool == "wrk":
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        words = (out.stdout + out.stderr).split()
        return " ".join(words[:2]) if words else "wrk"
    return f"locust {metadata.version('locust')} (FastHttpUser)"


@cache
def cpus() -> tuple[int, ...]:
    """The CPUs this run may use, read once: before `pin_servers` pins this process."""
    return tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()


def load_cpus() -> set[int]:
    return set(cpus()[:1])


def server_cpus() -> set[int]:
    return set(cpus()[1:]) if len(cpus()) > 1 else set(cpus())


def pin_load_generator() -> None:
    """Run the load generator on CPU 0 (the servers get the others): less noise on 2 cores."""
    if len(cpus()) > 1:
        os.sched_setaffinity(0, load_cpus())


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def pin(pids: Iterable[int], cpu_set: set[int]) -> int:
    """Pin every thread of `pids` to `cpu_set`; returns how many processes were pinned."""
    pinned = 0
    for pid in pids:
        with suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with suppress(OSError):
                    os.sched_setaffinity(int(tid), cpu_set)
            pinned += 1
    return pinned


def pin_servers(servers_too: bool = True) -> str:
    """Put this harness (its polling threads too) on the load generator's CPU and, with
    `servers_too`, every process it started (and their threads) on the other CPUs; without,
    the servers keep every CPU and the OS places them, as on a machine they share."""
    if len(cpus()) < 2:
        return "not pinned (one CPU)"
    pin([os.getpid()], load_cpus())
    where = f"load generator and harness on CPU {min(load_cpus())}"
    if not servers_too:
        return f"{where}, server processes on any CPU (placed by the OS)"
    n = pin(descendants(os.getpid()), server_cpus())
    return f"{where}, {n} server processes on CPU {','.join(map(str, sorted(server_cpus())))}"


def wrk_script(load: Load, workdir: Path) -> Path:
    tag = next(_tags)
    head = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    if load.vary:
        text = head + (
            "local n = 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            f"  return wrk.format(nil, nil, nil, string.format('{VARY_TEMPLATE}', {tag}, n))\n"
            "end\n"
        )
    else:
        text = head + f"wrk.body = '{load.body}'\n"
    path = workdir / f"load-{tag}.lua"
    path.write_text(text)
    return path


def parse_wrk(out: str) -> Result:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.M)
        assert m, out
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"^\s*(\d+) requests in", out, flags=re.M)
    assert rps and total, out
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return Result(float(rps.group(1)), latency("50"), latency("99"), errors, int(total.group(1)))


def run_wrk(url: str, load: Load, seconds: float, connections: int, workdir: Path) -> Result:
    script = wrk_script(load, workdir)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url + load.path],
        capture_output=True, text=True, check=True, preexec_fn=pin_load_generator,
    ).stdout
    return parse_wrk(out)


def run_locust(url: str, load: Load, seconds: float, connections: int, workdir: Path) -> Result:
    """locust's FastHttpUser through the project's load runner (patternkit.loadtest), which
    records every request unrounded: locust's own figures round to whole milliseconds, too
    coarse for sub-millisecond hops."""
    tag = next(_tags)
    env = {"LOADTEST_PATH": load.path, "LOADTEST_BODY": load.body,
           "LOADTEST_CLOSED_SECONDS": str(seconds)}
    if load.vary:
        env.update(LOADTEST_VARY_TEMPLATE=VARY_TEMPLATE, LOADTEST_VARY_TAG=str(tag))
    record = loadtest_runner.run_locust(
        url, {"closed": connections}, env, workdir, seconds=seconds, tag=f"bench-{tag}",
        preexec_fn=pin_load_generator)["closed"]
    stats = phase_stats(record)
    return Result(stats["rps"], stats["p50"] or 0.0, stats["p99"] or 0.0, stats["errors"],
                  stats["requests"])


def run_load(tool: str, url: str, load: Load, seconds: float, connections: int,
             workdir: Path) -> Result:
    runner = run_wrk if tool == "wrk" else run_locust
    return runner(url, load, seconds, connections, workdir)
