"""Unit tests of the load runner's plan file, statistics, gate and report (no Locust run).

The figures come from hand-made request records, so every expected value is known exactly;
the integration tests of Q3 and SA1 drive Locust itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patternkit.infra import free_port
from patternkit.loadtest import PlanError, judge, load_plan, markdown, write_report
from patternkit.loadtest.cli import EXIT_ERROR, EXIT_USAGE, main
from patternkit.loadtest.stats import phase_stats

ROOT = Path(__file__).resolve().parent.parent


def plan_data(**thresholds: str) -> dict[str, Any]:
    return {"request": {"features": 4}, "closed": {"seconds": 2},
            "open": {"seconds": 2, "rate": 10}, "thresholds": thresholds}


def test_the_patterns_plan_files_are_valid() -> None:
    for path in ROOT.glob("*/*/slo.toml"):
        plan = load_plan(path)
        assert plan.gate(), path


def test_thresholds_read_like_k6s() -> None:
    plan = load_plan({**plan_data(), "thresholds": {
        "p95": "< 250", "open.p99": "<=300", "closed.rps": ">= 1e2", "error_rate": "< 0.01"}})
    gate = {t.metric: (t.op, t.limit) for t in plan.gate()}
    assert gate == {"closed.p95": ("<", 250.0), "open.p99": ("<=", 300.0),
                    "closed.rps": (">=", 100.0), "closed.error_rate": ("<", 0.01)}
    assert plan.primary == "closed" and plan.phases == ["closed", "open"]


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"p96": "< 1"}, "no metric 'p96' in the closed phase; known: requests"),
    ({"dropped": "< 1"}, "no metric 'dropped' in the closed phase"),  # an open-loop metric
    ({"warm.p95": "< 1"}, "unknown phase 'warm'"),
    ({"p95": "about 250"}, "is not a condition like '< 250'"),
    ({"p95": "== 250"}, "is not a condition"),
])
def test_a_threshold_that_cannot_be_checked_is_an_error(
    thresholds: dict[str, str], message: str
) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        load_plan(plan_data(**thresholds))


def test_a_threshold_on_a_phase_that_does_not_run_is_an_error() -> None:
    data = plan_data(**{"open.p95": "< 1"})
    data["open"]["seconds"] = 0
    with pytest.raises(PlanError, match=r"the open phase does not run"):
        load_plan(data)


def test_other_plan_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no phase runs"):
        load_plan({"closed": {"seconds": 0}})
    with pytest.raises(PlanError, match=r"request.batch"):
        load_plan({"request": {"batch": [5, 2]}})
    with pytest.raises(PlanError, match=r"closed.usres: Extra inputs"):
        load_plan({"closed": {"usres": 3}})
    broken = tmp_path / "broken.toml"
    broken.write_text("[closed\nusers = 3")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(broken)
    with pytest.raises(PlanError, match="No such file"):
        load_plan(tmp_path / "missing.toml")


def test_only_keeps_a_phase_and_its_thresholds() -> None:
    plan = load_plan(plan_data(p95="< 5", **{"open.p95": "< 6"}))
    closed = plan.only("closed")
    assert closed.phases == ["closed"]
    assert [t.metric for t in closed.gate()] == ["closed.p95"]


def closed_record() -> dict[str, Any]:
    # [due, sent, done, status, rows, target]: 10 ms, 20 ms, ..., 100 ms; the last one a 500
    requests = [[-1, 0.1 * i, 0.1 * i + 0.01 * (i + 1), 200, 10, 0] for i in range(9)]
    requests.append([-1, 0.9, 1.0, 500, 10, 0])
    return {"mode": "closed", "t0": 0.0, "requests": requests,
            "locust": {"p50": 50, "requests": 10}}


def test_closed_loop_figures_are_exact() -> None:
    stats = phase_stats(closed_record(), batch_rows=1000, cpu_s=0.05)
    assert stats["requests"] == 10 and stats["ok"] == 9 and stats["errors"] == 1
    assert stats["error_rate"] == 0.1
    assert stats["seconds"] == 1.0 and stats["rps"] == 9.0 and stats["rows_per_s"] == 90.0
    assert stats["p50"] == pytest.approx(50.0)  # numpy's percentile of 10..90 ms, not rounded
    assert stats["p95"] == pytest.approx(86.0)
    assert stats["max"] == pytest.approx(90.0)
    assert stats["ms_per_row"] == pytest.approx(5.0)  # 450 ms of service for 90 rows
    assert stats["projected_s"] == pytest.approx(5.0)  # 1000 rows at 5 ms
    assert stats["cpu_ms_per_request"] == pytest.approx(5.0)
    assert stats["statuses"] == {"200": 9, "500": 1}
    assert stats["locust"] == {"p50": 50, "requests": 10}


def test_the_open_loop_counts_latency_from_the_due_time_and_drops() -> None:
    # 10/s offered for 1 s; 6 sent, each 5 ms late and answered 20 ms after its send; 4 dropped
    requests = [[0.1 * i, 0.1 * i + 0.005, 0.1 * i + 0.025, 200, 1, 0] for i in range(6)]
    record = {"mode": "open", "t0": 0.0, "offered": 10, "dropped": 4, "requests": requests}
    stats = phase_stats(record, rate=10.0, seconds=1)
    assert stats["offered"] == 10 and stats["sent"] == 6 and stats["dropped"] == 4
    assert stats["dropped_rate"] == 0.4
    assert stats["offered_rps"] == 10.0
    assert stats["achieved_rps"] == 6.0  # 6 answers in the schedule's 1 s
    assert stats["p50"] == pytest.approx(25.0)  # from the due time
    assert stats["service_p50"] == pytest.approx(20.0)  # from the send
    assert stats["late_p99_ms"] == pytest.approx(5.0)


def test_the_warm_up_is_sent_but_not_measured() -> None:
    # measurement starts at t0 = 1.0: the two requests sent (closed) or due (open) before it
    # are left out, slow as they were
    closed = {"mode": "closed", "t0": 1.0, "warmup_s": 1.0, "requests": [
        [-1, 0.2, 0.9, 200, 1, 0], [-1, 0.5, 1.4, 200, 1, 0],
        [-1, 1.0, 1.01, 200, 1, 0], [-1, 1.01, 1.02, 200, 1, 0]]}
    stats = phase_stats(closed)
    assert stats["requests"] == 2 and stats["max"] == pytest.approx(10.0)
    opened = {**closed, "mode": "open", "offered": 2, "dropped": 0, "requests": [
        [0.5, 0.5, 1.2, 200, 1, 0], [1.0, 1.0, 1.005, 200, 1, 0], [1.5, 1.5, 1.505, 200, 1, 0]]}
    stats = phase_stats(opened, rate=2.0)
    assert stats["sent"] == 2 and stats["p99"] == pytest.approx(5.0)


def test_the_gate_passes_or_fails_on_each_threshold() -> None:
    plan = load_plan({"closed": {"seconds": 1}, "request": {"features": 4},
                      "thresholds": {"p95": "< 100", "error_rate": "< 0.05", "rps": "> 1"}})
    report: dict[str, Any] = {"closed": phase_stats(closed_record())}
    judged = judge(report, plan)
    verdicts = {c["metric"]: c["pass"] for c in judged["checks"]}
    assert verdicts == {"closed.p95": True, "closed.error_rate": False, "closed.rps": True}
    assert judged["slo_pass"] is False
    # a metric without a value (no successful request) fails, it does not pass by default
    report = {"closed": phase_stats({"mode": "closed", "t0": 0, "requests": []})}
    assert judge(report, plan.only("closed"))["checks"][0]["pass"] is False


def test_the_report_files(tmp_path: Path) -> None:
    plan = load_plan({"closed": {"seconds": 1}, "request": {"features": 4},
                      "thresholds": {"p95": "< 100"}})
    report = judge({"target": "http://x", "label": "t", "features": 4,
                    "plan": plan.model_dump(mode="json"),
                    "closed": {"users": 4, **phase_stats(closed_record())}}, plan)
    text = markdown(report)
    assert "| closed loop | 4 | 9.0 | 50.00 | 86.00 |" in text
    assert "| closed.p95 < 100 | 86.00 | pass |" in text
    paths = write_report(report, tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert '"slo_pass": true' in paths["json"].read_text()


def test_the_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[closed]\nseconds = 1\n[thresholds]\np96 = "< 1"\n')
    assert main(["--target", "http://127.0.0.1:1", "--slo", str(bad)]) == EXIT_USAGE
    assert "no metric 'p96'" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text('[closed]\nseconds = 1\n[request]\nfeatures = 4\n')
    nobody = f"http://127.0.0.1:{free_port()}"
    assert main(["--target", nobody, "--slo", str(good), "--out", str(tmp_path)]) == EXIT_ERROR
    assert "is unreachable" in capsys.readouterr().err
