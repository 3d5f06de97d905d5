"""Rebuilding a registered model from its manifest alone: what TA1's fix makes possible.

`rebuild(engine, folder, work_dir)` reads the manifest T1's `train.py` wrote and refuses,
naming what is wrong, when it cannot promise the same model: provenance missing
(`missing_provenance`: a handed-over pickle has none), the training code changed since
(`code_changed`: the manifest's git SHA is what to check out), this environment's library
versions differ (`environment_mismatch`), or the DWH snapshot no longer hashes the same
(`data_changed`). Otherwise it gathers the same rows, trains with the same seed and params,
exports ONNX and compares the result with the registered one: metrics, the predictions on the
held-out rows, and the model file's sha256.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from patternkit.models import MANIFEST_FILE, OnnxModel, library_versions
from training_patterns.batch_training import train

# what a manifest must hold for a rebuild, as paths into its `provenance`
REQUIRED = ("git_sha", "code_sha256", "seed", "test_size", "params", "data.table",
            "data.up_to_id", "data.data_hash")
COMPARED_METRICS = ("accuracy", "n_train", "n_test")


class Refused(Exception):
    """A rebuild that cannot promise the same model: HTTP status, error code, message."""

    def __init__(self, status: int, error: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.details = status, error, details


def missing_provenance(manifest: dict[str, Any] | None) -> list[str]:
    """What of `REQUIRED` (and the library versions) the manifest lacks; all when none."""
    if manifest is None:
        return ["manifest.json", *REQUIRED, "libraries"]
    missing = []
    prov = manifest.get("provenance") or {}
    for path in REQUIRED:
        value: Any = prov
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value in (None, "", "unknown"):
            missing.append(path)
    if not manifest.get("libraries"):
        missing.append("libraries")
    return missing


def environment_differences(recorded: dict[str, str]) -> dict[str, dict[str, str | None]]:
    here = library_versions()
    return {name: {"manifest": version, "here": here.get(name)}
            for name, version in sorted(recorded.items()) if here.get(name) != version}


def rebuild(engine: sa.Engine, folder: Path, work_dir: Path) -> dict[str, Any]:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    missing = missing_provenance(manifest)
    if missing:
        raise Refused(409, "missing_provenance", "missing provenance: the manifest lacks "
                      + ", ".join(missing), missing=missing)
    prov = manifest["provenance"]
    if train.code_hash() != prov["code_sha256"]:
        raise Refused(409, "code_changed", f"the training code ({prov['code']}) changed since "
                      f"this model was built: check out {prov['git_sha']} to rebuild it",
                      git_sha=prov["git_sha"])
    differences = environment_differences(manifest["libraries"])
    if differences:
        names = ", ".join(f"{k} {v['manifest']} (here {v['here']})"
                          for k, v in differences.items())
        raise Refused(409, "environment_mismatch", f"built with {names}: rebuild it in the "
                      "environment its manifest names", differences=differences)
    data = prov["data"]
    clean = train.validate(train.gather(engine, int(data["up_to_id"])))
    if clean.hash != data["data_hash"]:
        raise Refused(409, "data_changed", f"{data['table']} up to id {data['up_to_id']} no "
                      f"longer hashes to {data['data_hash'][:12]}... (now {clean.hash[:12]}...):"
                      " the rows it was trained on changed", data_hash=clean.hash)
    trained = train.train(clean, int(prov["seed"]), dict(prov["params"]),
                          float(prov["test_size"]))
    out = Path(tempfile.mkdtemp(prefix="rebuild-", dir=work_dir))
    try:
        rebuilt = train.build(trained, clean, out, str(manifest["version"]),
                              seed=int(prov["seed"]), params=dict(prov["params"]),
                              run_id=f"rebuild-of-{prov.get('run_id')}",
                              test_size=float(prov["test_size"]))
        original = OnnxModel(folder).predict(trained.X_test)
        again = OnnxModel(out).predict(trained.X_test)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    before = {k: manifest["metrics"].get(k) for k in COMPARED_METRICS}
    after = {k: trained.metrics[k] for k in COMPARED_METRICS}
    same_labels = int(np.sum(original.labels == again.labels))
    prob_diff = float(np.max(np.abs(original.probabilities - again.probabilities)))
    checks = {"metrics": before == after, "predictions": same_labels == len(trained.y_test),
              "probabilities": prob_diff == 0.0,
              "sha256": rebuilt["sha256"] == manifest["sha256"]}
    return {
        "name": manifest["name"], "version": manifest["version"],
        "reproduced": all(checks.values()), "checks": checks,
        "metrics": {"registered": before, "rebuilt": after},
        "predictions": {"rows": len(trained.y_test), "same_labels": same_labels,
                        "max_probability_diff": prob_diff},
        "sha256": {"registered": manifest["sha256"], "rebuilt": rebuilt["sha256"]},
        "provenance": {"git_sha": prov["git_sha"], "data_hash": data["data_hash"],
                       "seed": prov["seed"], "params": prov["params"]},
    }
