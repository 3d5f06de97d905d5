"""The trainer of OA2: trains iris_lr once and writes its model card beside it.

The card (`model_card.json`) is what "nobody knows" lacks: who owns the model and what it is
for, the dataset version it was trained on (the manifest's data hash), the training code's
commit, and the input contract: the unit every measurement is in (cm) and the range each
feature may take, from the training data widened by 10% of its span. The legacy predictor
serves the same model file and ignores the card; the documented one refuses to start
without a card that names its model's sha256.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patternkit.models import load_dataset, sha256_file
from patternkit.trainer import train

CARD_FILE = "model_card.json"
OWNER = {"team": "iris-ml", "contact": "iris-ml@example.com", "on_call": "#iris-ml-oncall"}
PURPOSE = ("classify an iris flower (setosa, versicolor, virginica) from four measurements "
           "in centimetres, for the garden's sorting line")
MARGIN = 0.10  # of a feature's span in the training data, on each side


def code_version() -> dict[str, Any]:
    """The training code's commit (git), or, outside a checkout, the sha256 of this module."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(here)], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"source": "sha256 of trainer.py", "sha": sha256_file(Path(__file__))}
    return {"source": "git", "sha": sha, "dirty": bool(dirty.strip()),
            "path": "antipatterns/nobody_knows/trainer.py"}


def feature_ranges() -> list[dict[str, Any]]:
    X, _, features, _ = load_dataset("iris")
    out = []
    for i, name in enumerate(features):
        lo, hi = float(X[:, i].min()), float(X[:, i].max())
        pad = MARGIN * (hi - lo)
        out.append({"name": name.replace(" (cm)", "").replace(" ", "_"),
                    "min": round(max(0.0, lo - pad), 3), "max": round(hi + pad, 3),
                    "train_min": round(lo, 3), "train_max": round(hi, 3)})
    return out


def write_card(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    card = {
        "model": {"name": manifest["name"], "version": manifest["version"],
                  "sha256": manifest["sha256"]},
        "owner": OWNER,
        "purpose": PURPOSE,
        "dataset": {"name": "iris (scikit-learn)", "version": f"iris@{manifest['data_hash'][:12]}",
                    "rows": manifest["metrics"]["n_train"] + manifest["metrics"]["n_test"]},
        "code": code_version(),
        "input": {"unit": "cm", "features": feature_ranges()},
        "metrics": manifest["metrics"],
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = out / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(out / CARD_FILE)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m antipatterns.nobody_knows.trainer",
                                     description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the model's folder")
    args = parser.parse_args(argv)
    manifest, hit = train("iris_lr", args.out, version="1.0.0")
    card = write_card(args.out, manifest)
    print(f"iris_lr 1.0.0 {'copied from the model cache' if hit else 'trained'}; card: owner "
          f"{card['owner']['team']}, dataset {card['dataset']['version']}, code "
          f"{card['code']['sha'][:12]}, unit cm", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
