"""Serving benchmark: the template predictor against a bare FastAPI endpoint, in one run.

Boots both as real uvicorn processes (same flags), drives them with the same load generator
(wrk when installed, else locust's FastHttpUser), interleaved over several rounds, and prints
req/s, p50 and p99 per round plus the medians and the ratio predictor / bare. The ratio is
the figure to compare across machines; absolute numbers drift.

    python benchmarks/serving.py [--rounds 3] [--seconds 8] [--connections 16] [--tool locust]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import BODY, Load, choose_tool, pin_servers, run_load  # noqa: E402
from patternkit.client import format_table  # noqa: E402
from patternkit.models import train_model  # noqa: E402
from patternkit.topology import Stack, Topology  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tool", choices=("auto", "wrk", "locust"), default="auto")
    args = parser.parse_args()
    tool = choose_tool(args.tool)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_model("iris_lr", work / "model")

        def load(url: str, seconds: int) -> dict[str, float]:
            r = run_load(tool, url, Load(), seconds, args.connections, work)
            return {"rps": r.rps, "p50": r.p50, "p99": r.p99, "errors": float(r.errors)}

        with Stack(topology(work / "model"), work / "run") as stack:
            targets = {"predictor": stack.url("predictor"), "bare": stack.url("bare")}
            for url in targets.values():  # the predictor must answer before we measure it
                httpx.post(url + "/predict", content=BODY).raise_for_status()
            pinning = pin_servers()
            print(f"load: {tool}, {args.connections} connections, {args.rounds} rounds x "
                  f"{args.seconds}s per target, interleaved; {pinning}", flush=True)
            rows: list[dict[str, object]] = []
            results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
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
