"""Serving benchmark: the template predictor against a bare FastAPI endpoint, in one run.

Boots both as real uvicorn processes (same flags), drives them with the same load generator
(wrk when installed, else locust's FastHttpUser), interleaved over several rounds, and prints
req/s, p50 and p99 per round plus the medians and the ratio predictor / bare. The ratio is
the figure to compare across machines; absolute numbers drift.

    python benchmarks/serving.py [--rounds 3] [--seconds 8] [--connections 16]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from patternkit.client import format_table  # noqa: E402
from patternkit.models import train_model  # noqa: E402
from patternkit.topology import Stack, Topology  # noqa: E402

BODY = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def topology(model_dir: Path) -> Topology:
    return Topology.model_validate({
        "name": "bench", "id": "B", "title": "benchmark", "summary": "predictor vs bare",
        "category": "serving", "entry": "predictor",
        "services": {
            "predictor": {"app": "patternkit.predictor:create_app",
                          "env": {"MODEL_PATH": str(model_dir)}},
            "bare": {"app": "benchmarks.bare_app:create_app"},
        },
    })


def pin_load_generator() -> None:
    """Run the load generator on CPU 0 (the servers get CPU 1): less noise on 2 cores."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def pin_servers(stack: Stack) -> str:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    for proc in stack.procs.values():
        if proc.popen is not None and proc.alive:
            os.sched_setaffinity(proc.popen.pid, set(cpus[1:]))
    return f"load generator on CPU {cpus[0]}, servers on CPU {','.join(map(str, cpus[1:]))}"


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url + "/predict"],
        capture_output=True, text=True, check=True, preexec_fn=pin_load_generator,
    ).stdout

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.M)
        assert m, out
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50": latency("50"), "p99": latency("99"),
            "errors": float(errors.group(1)) if errors else 0.0}


def run_locust(url: str, seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    prefix = workdir / "locust"
    subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
         "--headless", "-u", str(connections), "-r", str(connections), "-t", f"{seconds}s",
         "--host", url, "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR"],
        capture_output=True, text=True, check=False, cwd=workdir,
        preexec_fn=pin_load_generator,
    )
    with open(f"{prefix}_stats.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    return {"rps": float(row["Requests/s"]), "p50": float(row["50%"]), "p99": float(row["99%"]),
            "errors": float(row["Failure Count"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "locust"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_model("iris_lr", work / "model")
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '{BODY}'\n"
        )

        def load(url: str, seconds: int) -> dict[str, float]:
            if tool == "wrk":
                return run_wrk(url, seconds, args.connections, script)
            return run_locust(url, seconds, args.connections, work)

        with Stack(topology(work / "model"), work / "run") as stack:
            targets = {"predictor": stack.url("predictor"), "bare": stack.url("bare")}
            for url in targets.values():  # the predictor must answer before we measure it
                httpx.post(url + "/predict", content=BODY).raise_for_status()
            pinning = pin_servers(stack)
            print(f"load: {tool}, {args.connections} connections, {args.rounds} rounds x "
                  f"{args.seconds}s per target, interleaved; {pinning}", flush=True)
            rows, results = [], {name: [] for name in targets}
            for rnd in range(1, args.rounds + 1):
                for name, url in targets.items():
                    load(url, args.warmup)
                    result = load(url, args.seconds)
                    results[name].append(result)
                    rows.append({"round": rnd, "server": name, "req/s": round(result["rps"]),
                                 "p50 ms": round(result["p50"], 2),
                                 "p99 ms": round(result["p99"], 2),
                                 "errors": int(result["errors"])})
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    med = {name: {k: statistics.median(r[k] for r in res) for k in ("rps", "p50", "p99")}
           for name, res in results.items()}
    summary = [{"server": name, "req/s": round(m["rps"]), "p50 ms": round(m["p50"], 2),
                "p99 ms": round(m["p99"], 2)} for name, m in med.items()]
    print("\nper round:\n" + format_table(rows))
    print("\nmedians:\n" + format_table(summary))
    ratio = med["predictor"]["rps"] / med["bare"]["rps"]
    print(f"\nratio predictor/bare (req/s): {ratio:.2f}  (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
