"""Unit tests of patternkit.monitor: PSI and KS, the rules file, the alert states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from patternkit.monitor import (
    AlertBook,
    Finding,
    Reference,
    Rules,
    Window,
    WindowReport,
    evaluate,
    ks_test,
    psi,
    save_reference,
    window_data,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_psi_is_small_for_a_sample_of_the_reference_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    same = rng.normal(size=5000)
    # expected from sampling alone: about (bins - 1) * (1/n + 1/m) = 9 * 2/5000 = 0.0036
    assert psi(ref, same, 10) < 0.02
    assert psi(ref, ref, 10) == pytest.approx(0.0, abs=1e-12)
    assert psi(ref, same + 1.0, 10) > 0.5
    _, p_same = ks_test(ref, same)
    _, p_shift = ks_test(ref, same + 0.5)
    assert p_same > 0.001 and p_shift < 1e-10


def report(*findings: Finding, k: int = 0) -> WindowReport:
    start = T0 + timedelta(seconds=10 * k)
    return WindowReport(Window(start, start + timedelta(seconds=10)), {}, list(findings),
                        f"r-{k}")


def test_an_alert_fires_after_for_windows_and_resolves_when_the_condition_goes() -> None:
    rules = Rules.model_validate({"traffic_low": {"min_rps": 2, "for": 2}})
    book = AlertBook(rules)
    low = Finding("traffic_low", None, None, 0.0, 2.0)
    assert book.step(report(low, k=0)) == []  # pending
    assert book.step(report(k=1)) == []  # dropped silently: never fired
    assert book.step(report(low, k=2)) == []
    (fired,) = book.step(report(low, k=3))
    assert (fired["status"], fired["rule"], fired["value"], fired["first_request_id"]) == (
        "firing", "traffic_low", 0.0, "r-2")
    assert fired["since_window"]["start"] == (T0 + timedelta(seconds=20)).isoformat()
    assert book.step(report(low, k=4)) == []  # still firing: no new notification
    (resolved,) = book.step(report(k=5))
    assert resolved["status"] == "resolved" and resolved["endsAt"] is not None
    assert book.states == {}


def test_the_rules_file_names_a_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[feature_drift]\nbins = 5\n")
    with pytest.raises(ValueError, match=r"feature_drift\.bins"):
        Rules.load(bad)
    bad.write_text("[class_ratio]\nmax_share = 0.4\ncap = 1\n")
    with pytest.raises(ValueError, match=r"class_ratio\.cap"):
        Rules.load(bad)


def test_evaluate_reads_batches_and_flags_only_the_drifted_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 2))
    y = rng.integers(0, 2, 2000)
    ref = Reference.load(save_reference(tmp_path, X, y, ["a", "b"], ["no", "yes"]))
    rules = Rules.model_validate({"feature_drift": {}, "repeated_input": {"max_repeats": 3}})
    batch = rng.normal(size=(500, 2))
    batch[:, 1] += 1.0
    rows = [{"request_id": f"r-{i}", "input": batch[i * 50:(i + 1) * 50].tolist(),
             "output": {"prediction": [0] * 50}} for i in range(10)]
    rows.append({"request_id": "bad", "input": [[1.0]], "output": None})
    w = Window(T0, T0 + timedelta(seconds=10))
    out = evaluate(window_data(rows, w, 2), rules, ref)
    assert out.measures["requests"] == 11 and out.measures["unreadable"] == 1
    assert [(f.rule, f.subject) for f in out.findings] == [("feature_drift", "b")]
    assert out.measures["drift"]["a"]["level"] == "ok"

