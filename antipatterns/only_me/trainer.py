"""TA1's two ways of making a model, once, side by side in one run directory.

The fix: T1's `train.py` trains `iris_batch` 1.0.0 from the DWH (seeded split, the full
provenance manifest) and publishes it to the repository. The antipattern: the notebook
(`notebook_style.py`) runs on "the laptop" and hands over `model_final_v2.pkl` only; its
author then converts that pickle to ONNX on the laptop for the servers (`iris_laptop`
1.0.0), whose manifest names the laptop's libraries and pins the onnxruntime it was tried
with (`LAPTOP`), a runtime the servers do not have.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from patternkit import db, logs
from patternkit.model_repository import publish
from patternkit.models import MANIFEST_FILE, write_artifact
from training_patterns.batch_training import dwh, train

log = logging.getLogger("only_me.trainer")

HANDOVER = "model_final_v2.pkl"
HANDED_OVER_RUN = "7"  # NOTEBOOK_ENTROPY of the notebook run that was handed over
LAPTOP = {"python": "3.10.12", "scikit-learn": "1.3.2", "skl2onnx": "1.16.0",
          "onnx": "1.15.0", "onnxruntime": "1.16.3", "numpy": "1.26.4"}


def train_t1(url: str, repo: Path, seed: int = 0) -> str:
    """T1's steps without the job around them: gather, validate, train, build, register."""
    if (repo / train.MODEL_NAME / "1.0.0").is_dir():
        return "1.0.0"
    engine = db.make_engine(url)
    try:
        clean = train.validate(train.gather(engine))
    finally:
        engine.dispose()
    trained = train.train(clean, seed, dict(train.DEFAULT_PARAMS))
    with tempfile.TemporaryDirectory() as out:
        manifest = train.build(trained, clean, Path(out), "1.0.0", seed=seed,
                               params=dict(train.DEFAULT_PARAMS), run_id="only_me-trainer")
        publish(out, repo)
    log.info("T1 train.py: iris_batch 1.0.0 accuracy %s, data %s..., git %s",
             manifest["metrics"]["accuracy"], manifest["provenance"]["data"]["data_hash"][:12],
             manifest["provenance"]["git_sha"])
    return "1.0.0"


def run_notebook(out: Path) -> Path:
    """The notebook run whose pickle was handed over."""
    env = {**os.environ, "NOTEBOOK_OUT": str(out), "NOTEBOOK_ENTROPY": HANDED_OVER_RUN}
    done = subprocess.run([sys.executable, "-m", "antipatterns.only_me.notebook_style"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    log.info("notebook: %s", done.stdout.strip().replace("\n", "; "))
    return out / HANDOVER


def laptop_export(pickled: Path, repo: Path) -> None:
    """The author's own ONNX conversion of the pickle, its manifest from the laptop."""
    if (repo / "iris_laptop" / "1.0.0").is_dir():
        return
    with pickled.open("rb") as handle:
        model = pickle.load(handle)  # our own file: the handover
    with tempfile.TemporaryDirectory() as out:
        write_artifact(model, out, name="iris_laptop", version="1.0.0",
                       features=list(dwh.FEATURES), classes=train.CLASSES,
                       metrics={"accuracy": "see the notebook"})
        path = Path(out) / MANIFEST_FILE
        manifest = json.loads(path.read_text())
        manifest["libraries"] = LAPTOP
        manifest["requires"]["onnxruntime"] = f"=={LAPTOP['onnxruntime']}"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        publish(out, repo)
    log.info("laptop export: iris_laptop 1.0.0 requires onnxruntime==%s", LAPTOP["onnxruntime"])


def main() -> None:
    logs.configure(service="trainer")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--handover", required=True, type=Path)
    args = parser.parse_args()
    dwh_url = os.environ["DATABASE_URL"]
    train_t1(dwh_url, args.repo)
    laptop_export(run_notebook(args.handover), args.repo)


if __name__ == "__main__":
    main()
