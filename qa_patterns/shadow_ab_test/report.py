"""The shadow report of Q1: A against B, measured against A against A' (the noise floor).

It reads the prediction log's rows, joins them by request id and compares row by row: the
labels, and the probability difference `d = max_k |p_A[k] - p_X[k]|`. A' is A's recipe
retrained on another split (another seed): what separates A from A' is the noise of a
retrain, which any new model is allowed. The noise floor is the NOISE_QUANTILE quantile of
the A-vs-A' differences; a row whose A-vs-B difference is above it is flagged. A field
(`labels`, `probabilities`) is flagged with Diffy's rule: B's differences ("raw") outnumber
those of A' ("noise"), by more than RELATIVE_THRESHOLD_PCT of both together and more than
ABSOLUTE_THRESHOLD_PCT of the rows compared.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

A, A_PRIME, B = "a", "a_prime", "b"
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
TOP_FLAGGED = 10


@dataclass(frozen=True)
class Rules:
    """How the noise floor is taken and when a field counts as different (Diffy's defaults)."""

    noise_quantile: float = 0.99
    relative_pct: float = 20.0
    absolute_pct: float = 0.03


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def quantiles(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    return {k: _r(np.quantile(values, q)) for k, q in QUANTILES.items()}


def latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50_ms": _r(np.quantile(arr, 0.5), 1),
            "p99_ms": _r(np.quantile(arr, 0.99), 1)}


def field_verdict(raw: int, noise: int, total: int, rules: Rules) -> dict[str, Any]:
    """Diffy's rule for one field: raw (A-vs-B) differences against noise (A-vs-A') ones.

    relative = |raw - noise| / (raw + noise), absolute = |raw - noise| / total (in percent);
    flagged when raw > noise and both exceed their thresholds (twitter/diffy,
    `DifferencesFilterFactory`).
    """
    gap = abs(raw - noise)
    relative = 100.0 * gap / (raw + noise) if raw + noise else 0.0
    absolute = 100.0 * gap / total if total else 0.0
    flagged = raw > noise and relative > rules.relative_pct and absolute > rules.absolute_pct
    return {"raw": raw, "noise": noise, "relative_pct": _r(relative, 2),
            "absolute_pct": _r(absolute, 3), "flagged": flagged}


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and isinstance(row.get("output"), dict)


def _arrays(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    out = row["output"]
    return (np.asarray(out["prediction"], dtype=np.int64),
            np.asarray(out["probabilities"], dtype=float))


def build_report(rows: list[dict[str, Any]], rules: Rules, *, noise: bool) -> dict[str, Any]:
    """The report over the log rows of a window (any order); `noise`: whether A' is mirrored.

    A request counts when A answered it; it is compared when every shadow answered it with
    as many rows and classes as A.
    """
    by_request: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    order: list[str] = []
    for row in sorted(rows, key=lambda r: r["id"]):
        rid = row["request_id"]
        if rid is None:
            continue
        if row["service"] == A and rid not in by_request:
            order.append(rid)
        by_request[rid][row["service"]] = row
    requests = [rid for rid in order if _ok(by_request[rid].get(A))]
    shadows = [A_PRIME, B] if noise else [B]

    decisions: Counter[str] = Counter()
    lat: dict[str, list[float]] = {s: [] for s in (A, *shadows)}
    errors: dict[str, Counter[str]] = {s: Counter() for s in shadows}
    calls: Counter[str] = Counter()
    pending = incomparable = 0
    d_ab: list[np.ndarray] = []
    d_aa: list[np.ndarray] = []
    labels_ab: list[np.ndarray] = []
    labels_aa: list[np.ndarray] = []
    where: list[tuple[str, int, int, int, int]] = []  # request, row, label a, a', b
    for rid in requests:
        got = by_request[rid]
        decisions[(got[A].get("extra") or {}).get("shadow", "unknown")] += 1
        lat[A].append(got[A]["latency_ms"])
        for s in shadows:
            if s in got:
                calls[s] += 1
                if _ok(got[s]):
                    lat[s].append(got[s]["latency_ms"])
                else:
                    errors[s][(got[s].get("extra") or {}).get("error", "unknown")] += 1
        if (got[A].get("extra") or {}).get("shadow") == "mirrored" and any(
            s not in got for s in shadows
        ):
            pending += 1
        if not all(_ok(got.get(s)) for s in shadows):
            continue
        la, pa = _arrays(got[A])
        lb, pb = _arrays(got[B])
        la2, pa2 = _arrays(got[A_PRIME]) if noise else (la, pa)
        if not (pa.shape == pb.shape == pa2.shape and la.shape == lb.shape == la2.shape):
            incomparable += 1
            continue
        d_ab.append(np.abs(pa - pb).max(axis=1))
        d_aa.append(np.abs(pa - pa2).max(axis=1))
        labels_ab.append(la != lb)
        labels_aa.append(la != la2)
        where += [(rid, i, int(la[i]), int(la2[i]), int(lb[i])) for i in range(len(la))]

    report: dict[str, Any] = {
        "requests": len(requests),
        "mirror_decisions": dict(decisions),
        "pending": pending,
        "compared_requests": len(d_ab),
        "incomparable_requests": incomparable,
        "latency": {s: latency(v) for s, v in lat.items()},
        "errors": {s: {"calls": calls[s], "errors": sum(errors[s].values()),
                       "rate": _r(sum(errors[s].values()) / calls[s]) if calls[s] else None,
                       "by_error": dict(errors[s])} for s in shadows},
    }
    report.update(compare(d_ab, d_aa, labels_ab, labels_aa, where, rules, noise=noise))
    return report


def verdict(flagged_fields: list[str], noise: bool) -> str:
    beyond = " beyond A's retrain noise" if noise else ""
    if flagged_fields:
        return f"B differs from A{beyond} in: {', '.join(flagged_fields)}"
    return "B agrees with A within A's retrain noise" if noise else "B agrees with A"


def compare(
    d_ab: list[np.ndarray], d_aa: list[np.ndarray], labels_ab: list[np.ndarray],
    labels_aa: list[np.ndarray], where: list[tuple[str, int, int, int, int]], rules: Rules,
    *, noise: bool,
) -> dict[str, Any]:
    """Agreement, the difference quantiles, the floor, the flagged rows and fields."""
    if not d_ab:
        return {"compared_rows": 0, "labels": None, "probabilities": None,
                "flagged_rows": 0, "flagged": [], "verdict": "nothing compared yet"}
    raw_d, noise_d = np.concatenate(d_ab), np.concatenate(d_aa)
    raw_l, noise_l = np.concatenate(labels_ab), np.concatenate(labels_aa)
    n = len(raw_d)
    floor = float(np.quantile(noise_d, rules.noise_quantile))
    above = raw_d > floor
    labels = field_verdict(int(raw_l.sum()), int(noise_l.sum()), n, rules)
    probabilities = field_verdict(int(above.sum()), int((noise_d > floor).sum()), n, rules)
    top = sorted(np.flatnonzero(above), key=lambda i: -raw_d[i])[:TOP_FLAGGED]
    flagged_fields = [name for name, v in (("labels", labels), ("probabilities", probabilities))
                      if v["flagged"]]
    source = (f"q{rules.noise_quantile:g} of the A-vs-A' differences" if noise
              else "0: no A' is mirrored (A_PRIME_URL is empty), every difference counts")
    return {
        "compared_rows": n,
        "labels": {
            "agreement_a_b": _r(1 - raw_l.mean()),
            "agreement_a_a_prime": _r(1 - noise_l.mean()) if noise else None,
            **labels,
        },
        "probabilities": {
            "diff_a_b": quantiles(raw_d),
            "diff_a_a_prime": quantiles(noise_d) if noise else None,
            "noise_floor": _r(floor, 6),
            "noise_floor_is": source,
            **probabilities,
        },
        "flagged_rows": int(above.sum()),
        "flagged": [
            {"request_id": where[i][0], "row": where[i][1], "label_a": where[i][2],
             "label_a_prime": where[i][3], "label_b": where[i][4], "diff_a_b": _r(raw_d[i]),
             "diff_a_a_prime": _r(noise_d[i])}
            for i in top
        ],
        "verdict": verdict(flagged_fields, noise),
        "rules": {"noise_quantile": rules.noise_quantile, "relative_pct": rules.relative_pct,
                  "absolute_pct": rules.absolute_pct},
    }
