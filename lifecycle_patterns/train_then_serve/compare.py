"""What an approver sees in L1: a candidate against the deployed model, and the bar it must meet.

Both ONNX graphs (from the model repository) are scored on the candidate's own held-out rows,
rebuilt from its manifest's provenance the way T1's job drew them (the DWH snapshot up to
`data.up_to_id`, T1's validate step, a stratified split with the recorded seed and test
size), so the two numbers are on the same rows. The bar is `min_accuracy` (absolute) and
`max_regression` (how far below the deployed model the candidate may be on those rows);
`problems` lists each unmet part in words, and an empty list means it may be approved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from patternkit.models import OnnxModel
from training_patterns.batch_training import train


def held_out(engine: sa.Engine, provenance: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    data = provenance["data"]
    clean = train.validate(train.gather(engine, int(data["up_to_id"])))
    _, X_test, _, y_test = train_test_split(
        clean.X, clean.y, test_size=float(provenance["test_size"]),
        random_state=int(provenance["seed"]), stratify=clean.y)
    return X_test, y_test


def accuracy(model: OnnxModel, X: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.mean(model.predict(X).labels == y)), 4)


def compare(engine: sa.Engine, repo_dir: Path, candidate: str, current: str | None,
            min_accuracy: float, max_regression: float) -> dict[str, Any]:
    folder = repo_dir / train.MODEL_NAME
    cand = OnnxModel(folder / candidate)
    X, y = held_out(engine, cand.manifest["provenance"])
    found: dict[str, Any] = {
        "candidate": {"version": candidate, "accuracy": accuracy(cand, X, y),
                      "training_metrics": cand.manifest.get("metrics", {}),
                      "params": cand.manifest["provenance"].get("params"),
                      "run_id": cand.manifest["provenance"].get("run_id")},
        "current": None,
        "rows": {"n": len(y), "what": "the candidate's held-out rows (seed "
                 f"{cand.manifest['provenance']['seed']}, DWH up to id "
                 f"{cand.manifest['provenance']['data']['up_to_id']})"},
        "bar": {"min_accuracy": min_accuracy, "max_regression": max_regression},
    }
    problems: list[str] = []
    cand_acc = found["candidate"]["accuracy"]
    if cand_acc < min_accuracy:
        problems.append(f"accuracy {cand_acc} is under the bar MIN_ACCURACY {min_accuracy}")
    if current is not None:
        cur_acc = accuracy(OnnxModel(folder / current), X, y)
        found["current"] = {"version": current, "accuracy": cur_acc}
        found["delta"] = round(cand_acc - cur_acc, 4)
        if cand_acc < cur_acc - max_regression:
            problems.append(f"accuracy {cand_acc} is more than MAX_REGRESSION {max_regression} "
                            f"below the deployed {current} ({cur_acc}) on the same "
                            f"{len(y)} rows")
    found["problems"] = problems
    found["passes"] = not problems
    return found
