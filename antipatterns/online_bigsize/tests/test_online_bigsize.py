"""SA1 integration tests: the heavy and the light model server under the same load and gate.

The acceptance CLI runs once (both models, an open loop at 20 requests a second); the tests
read its report. The heavy model fails by construction, not by luck: its DELAY_MS alone is
above the p95 limit and its per-row time alone overruns the batch window.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from antipatterns.online_bigsize.acceptance import PLAN, window_s
from patternkit.client import Client
from patternkit.loadtest import load_plan
from patternkit.topology import Stack

_runs: dict[str, dict[str, Any]] = {}


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\n[SA1] {line}", flush=True)

    return show


@pytest.fixture
def acceptance(stack: Stack) -> dict[str, Any]:
    """`python -m antipatterns.online_bigsize.acceptance` against both servers, once."""
    key = str(stack.run_dir)
    if key not in _runs:
        out = Path(stack.run_dir) / "acceptance"
        argv = [sys.executable, "-m", "antipatterns.online_bigsize.acceptance", "--out", str(out)]
        for name in ("heavy", "light"):
            argv += ["--model", f"{name}={stack.url(name)}",
                     "--pid", f"{name}={stack.proc(name).popen.pid}"]  # type: ignore[union-attr]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        _runs[key] = {"stdout": done.stdout, "out": out,
                      **json.loads((out / "acceptance.json").read_text())}
    return _runs[key]


def test_heavy_fails_the_slo_and_light_passes(
    acceptance: dict[str, Any], report: Callable[[str], None]
) -> None:
    heavy, light = acceptance["models"]["heavy"], acceptance["models"]["light"]
    limit = next(t.limit for t in load_plan(PLAN).gate() if t.metric == "open.p95")
    assert heavy["p95"] > limit
    assert any(f.startswith("open.p95") for f in heavy["failed"])
    assert light["p95"] < limit, light
    assert light["failed"] == []
    report(f"p95 at 20/s: heavy {heavy['p95']} ms, light {light['p95']} ms (limit {limit:g})")


def test_the_accuracy_gain_is_small_but_real(stack: Stack, acceptance: dict[str, Any]) -> None:
    heavy, light = acceptance["models"]["heavy"], acceptance["models"]["light"]
    assert 0 < heavy["accuracy"] - light["accuracy"] < 0.03
    manifests = {}
    for name in ("heavy", "light"):
        with Client(stack.url(name)) as client:
            manifests[name] = client.get("/metadata").json()["model"]
    assert manifests["heavy"]["name"] == "synthetic_forest"
    assert manifests["light"]["name"] == "synthetic_lr"
    # the same data and split: the gap is the models', not the test sets'
    assert manifests["heavy"]["data_hash"] == manifests["light"]["data_hash"]
    assert manifests["heavy"]["metrics"]["n_test"] == manifests["light"]["metrics"]["n_test"]


def test_the_report_accepts_light_and_rejects_heavy(
    acceptance: dict[str, Any], report: Callable[[str], None]
) -> None:
    assert acceptance["models"]["light"]["accepted"] is True
    assert acceptance["models"]["heavy"]["accepted"] is False
    assert acceptance["ship"] == "light"
    stdout = acceptance["stdout"]
    assert "REJECT: open.p95 < 150" in stdout
    assert "ship: light" in stdout
    assert "+1.5 pts" in stdout  # heavy's accuracy, against light's
    for name in ("heavy", "light"):
        assert (acceptance["out"] / name / "report.json").is_file()
        assert (acceptance["out"] / name / "report.png").is_file()
    report("\n" + stdout)


def test_heavy_costs_several_times_the_cpu(acceptance: dict[str, Any]) -> None:
    """Server CPU per request, from /proc: the forest's 1,000 trees are real work (DELAY_MS is
    a sleep and costs none). Lenient: 2x, where a quiet machine shows several times that."""
    heavy, light = acceptance["models"]["heavy"], acceptance["models"]["light"]
    assert heavy["cpu_ms_per_request"] > 2 * light["cpu_ms_per_request"] > 0
    # and the gate's cost threshold (CPU per request) rejects the forest, whatever the delay
    assert any(f.startswith("open.cpu_ms_per_request") for f in heavy["failed"])


def test_heavy_overruns_the_batch_window(acceptance: dict[str, Any]) -> None:
    window = window_s(load_plan(PLAN))
    assert window == 1800
    heavy, light = acceptance["models"]["heavy"], acceptance["models"]["light"]
    assert heavy["projected_s"] > window > light["projected_s"]
    assert any(f.startswith("open.projected_s") for f in heavy["failed"])
