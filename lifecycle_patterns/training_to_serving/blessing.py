"""The automatic gate of L2, in the manner of TFX's Evaluator and InfraValidator.

`evaluate` judges a candidate on the held-out rows of its own training run (the DWH snapshot,
seed and split its manifest records), beside the stable model on the same rows:

- an absolute bar: accuracy >= MIN_ACCURACY;
- no worse than the stable model beyond MAX_REGRESSION (TFX's change threshold);
- every slice passes: the recall of each class >= MIN_SLICE_RECALL (TFX's sliced metrics).

`infra_validate` then loads the candidate in the real predictor (the template predictor in
its model-load mode, a sandbox process on a free port, as InfraValidator launches a model
server), waits for it to be ready and queries it with the same rows: the served labels must
be the offline ones. A candidate is blessed only when every check passed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import sqlalchemy as sa

from lifecycle_patterns.training_to_serving.deployer import Deployer
from patternkit.models import OnnxModel
from training_patterns.batch_training import train

CLASSES = train.CLASSES


@dataclass(frozen=True)
class Bars:
    min_accuracy: float = 0.9
    max_regression: float = 0.02
    min_slice_recall: float = 0.8


@dataclass
class Verdict:
    """The gate's record of one candidate: each check, its value and its bar."""

    version: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def blessed(self) -> bool:
        return bool(self.checks) and all(c["passed"] for c in self.checks)

    def add(self, name: str, passed: bool, detail: str, **values: Any) -> None:
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail, **values})

    def failed(self) -> list[str]:
        return [f"{c['check']}: {c['detail']}" for c in self.checks if not c["passed"]]

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "blessed": self.blessed}


def held_out(engine: sa.Engine, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The test rows of the run that built `manifest`: the same snapshot, seed and split."""
    from sklearn.model_selection import train_test_split

    prov = manifest["provenance"]
    clean = train.validate(train.gather(engine, prov["data"]["up_to_id"]))
    _, X_test, _, y_test = train_test_split(clean.X, clean.y, test_size=prov["test_size"],
                                            random_state=prov["seed"], stratify=clean.y)
    return X_test, y_test


def scores(model: OnnxModel, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    labels = model.predict(X).labels
    recall = {c: round(float(np.mean(labels[y == i] == i)), 4) if np.any(y == i) else None
              for i, c in enumerate(CLASSES)}
    return {"accuracy": round(float(np.mean(labels == y)), 4), "recall": recall,
            "labels": labels}


def evaluate(candidate: OnnxModel, stable: OnnxModel | None, engine: sa.Engine, bars: Bars
             ) -> tuple[Verdict, np.ndarray, np.ndarray]:
    """The Evaluator's three checks (blocking: run it in a thread); the rows, for the infra
    validation."""
    X, y = held_out(engine, candidate.manifest)
    verdict = Verdict(candidate.version)
    cand = scores(candidate, X, y)
    verdict.metrics = {"rows": len(y), "candidate": {k: v for k, v in cand.items()
                                                     if k != "labels"}}
    verdict.add("absolute_bar", cand["accuracy"] >= bars.min_accuracy,
                f"accuracy {cand['accuracy']} vs MIN_ACCURACY {bars.min_accuracy}",
                value=cand["accuracy"], bar=bars.min_accuracy)
    if stable is not None:
        cur = scores(stable, X, y)
        verdict.metrics["stable"] = {"version": stable.version, "accuracy": cur["accuracy"],
                                     "recall": cur["recall"]}
        floor = round(cur["accuracy"] - bars.max_regression, 4)
        verdict.add("vs_stable", cand["accuracy"] >= floor,
                    f"accuracy {cand['accuracy']} vs stable {stable.version} "
                    f"{cur['accuracy']} - MAX_REGRESSION {bars.max_regression}",
                    value=cand["accuracy"], bar=floor)
    else:
        verdict.add("vs_stable", True, "no stable model yet: nothing to compare with")
    worst = min(r for r in cand["recall"].values() if r is not None)
    low = {c: r for c, r in cand["recall"].items() if r is not None and r < bars.min_slice_recall}
    verdict.add("slices", not low,
                f"recall per class {cand['recall']} vs MIN_SLICE_RECALL "
                f"{bars.min_slice_recall}" + (f"; failing: {sorted(low)}" if low else ""),
                value=worst, bar=bars.min_slice_recall)
    return verdict, X, cand["labels"]


async def infra_validate(verdict: Verdict, deployer: Deployer, X: np.ndarray,
                         expected: np.ndarray, timeout_s: float) -> None:
    """Load the candidate in a sandbox predictor, query it, compare, stop it."""
    started = time.perf_counter()
    member = await deployer.spawn(verdict.version, role="infra", register=False)
    try:
        await deployer.wait_ready(member, timeout_s)
        async with aiohttp.ClientSession() as session, session.post(
                f"{member.url}/predict", json={"data": X.tolist()},
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            status = resp.status
            body = await resp.json()
        served = np.asarray(body.get("prediction", []), dtype=np.int64) if status == 200 \
            else np.asarray([])
        same = status == 200 and served.shape == expected.shape and \
            bool(np.array_equal(served, expected))
        ms = round((time.perf_counter() - started) * 1000)
        verdict.add("infra", same,
                    f"loaded in the real predictor and queried with {len(X)} rows in {ms} ms: "
                    + ("the served labels are the offline ones" if same else
                       f"status {status}, served labels differ from the offline ones"),
                    served_version=body.get("version") if status == 200 else None)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        verdict.add("infra", False, f"the predictor could not serve it: "
                    f"{type(exc).__name__}: {exc}")
    finally:
        await deployer.stop(member, "infra validation done")


def load(repo_dir: Path, name: str, version: str) -> OnnxModel:
    return OnnxModel(repo_dir / name / version)


async def gate(candidate_version: str, stable_version: str | None, repo_dir: Path, name: str,
               engine: sa.Engine, bars: Bars, deployer: Deployer, infra_timeout_s: float
               ) -> Verdict:
    """Evaluator, then InfraValidator (only for a candidate the Evaluator passed)."""
    candidate = await asyncio.to_thread(load, repo_dir, name, candidate_version)
    stable = await asyncio.to_thread(load, repo_dir, name, stable_version) \
        if stable_version else None
    verdict, X, labels = await asyncio.to_thread(evaluate, candidate, stable, engine, bars)
    if verdict.blessed:
        await infra_validate(verdict, deployer, X, labels, infra_timeout_s)
    else:
        verdict.add("infra", False, "skipped: the evaluator did not pass it")
    return verdict
