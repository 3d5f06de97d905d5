"""Demo traffic for TA1: the two artifacts side by side, the metric spread of the notebook
over eight runs against T1's rebuilds, and the two refusals.

It lists what each artifact carries (`GET /models`), runs the notebook eight times as its
author would (fresh processes, each drawing its own split: NOTEBOOK_ENTROPY from a seeded
generator, so the demo repeats), the same eight splits again as an unpinned machine with an
older scikit-learn's defaults would (NOTEBOOK_SKLEARN_DEFAULTS=0.21), and
rebuilds T1's model as often from its manifest; then asks for a rebuild of the pickle (409
missing provenance) and has the predictor load the laptop's ONNX export (409: another
onnxruntime). The picture puts the accuracies of both on one axis.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from patternkit import charts
from patternkit.client import Client
from patternkit.topology import Stack

RUNS = 8
DRAWS_SEED = 1  # the randomness each notebook run draws, simulated: seeded, so the demo repeats


def notebook_run(entropy: int, project: Path, sklearn_defaults: str = "") -> float:
    """One run of the notebook in a fresh process: the split it draws (`entropy`), on this
    machine or one whose scikit-learn has older defaults (`sklearn_defaults="0.21"`)."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "NOTEBOOK_ENTROPY": str(entropy), "NOTEBOOK_OUT": out,
               "NOTEBOOK_SKLEARN_DEFAULTS": sklearn_defaults}
        done = subprocess.run([sys.executable, "-m", "antipatterns.only_me.notebook_style"],
                              env=env, cwd=project, capture_output=True, text=True,
                              timeout=120, check=True)
    found = re.search(r"accuracy: ([0-9.]+)", done.stdout)
    if found is None:
        raise RuntimeError(f"the notebook printed no accuracy: {done.stdout!r}")
    return float(found.group(1))


def draw(notebook: list[float], other_machine: list[float], t1: list[float], path: Path
         ) -> Path | None:
    def make() -> Any:
        fig, (ax,) = charts.figure("Only-me: held-out accuracy, run after run", (3.6,),
                                   width=9.0)
        ax.plot(range(1, len(notebook) + 1), notebook, "o-", color=charts.COLORS["miss"],
                label=f"notebook_style.py, unseeded (spread {max(notebook) - min(notebook):.4f})")
        ax.plot(range(1, len(other_machine) + 1), other_machine, "^--",
                color=charts.COLORS["error"],
                label="the same splits on an unpinned machine (scikit-learn 0.21 defaults)")
        ax.plot(range(1, len(t1) + 1), t1, "s-", color=charts.COLORS["hit"], ms=9,
                label=f"T1 train.py rebuilt from its manifest (spread {max(t1) - min(t1):.4f})")
        ax.set_xlabel("run")
        ax.set_ylabel("accuracy on its held-out rows")
        ax.set_ylim(min(notebook + other_machine + t1) - 0.03, 1.01)
        ax.legend(loc="lower left", fontsize=8)
        return fig

    return charts.picture(path, make)


def run(stack: Stack, out: Path | None = None) -> list[dict[str, Any]]:
    out = out or Path(stack.run_dir)
    rows: list[dict[str, Any]] = []
    with Client(stack.url(), timeout=60) as api:
        for model in api.get("/models").json()["models"]:
            prov = model["provenance"] or {}
            rows.append({"step": f"artifact {model['id']}", "kind": model["kind"],
                         "files": ", ".join(model["files"]),
                         "git_sha": (prov.get("git_sha") or "-")[:12],
                         "data_hash": (prov.get("data_hash") or "-")[:12],
                         "seed": prov.get("seed", "-"),
                         "missing": len(model["missing"])})

        draws = np.random.default_rng(DRAWS_SEED).integers(0, 2**31 - 1, RUNS).tolist()
        notebook = [notebook_run(int(d), stack.project) for d in draws]
        rows.append({"step": f"notebook x{RUNS} (fresh processes)",
                     "accuracies": " ".join(f"{a:.4f}" for a in notebook),
                     "spread": round(max(notebook) - min(notebook), 4)})
        other = [notebook_run(int(d), stack.project, "0.21") for d in draws]
        changed = [abs(a - b) for a, b in zip(notebook, other, strict=True) if a != b]
        rows.append({"step": "the same splits, unpinned machine",
                     "accuracies": " ".join(f"{a:.4f}" for a in other),
                     "spread": round(max(other) - min(other), 4),
                     "kind": f"scikit-learn 0.21 defaults: {len(changed)}/{RUNS} runs moved, "
                             f"max {max(changed, default=0):.4f}"})

        rebuilt = [api.post("/models/1.0.0/rebuild").json() for _ in range(RUNS)]
        t1 = [r["metrics"]["rebuilt"]["accuracy"] for r in rebuilt]
        rows.append({"step": f"T1 1.0.0 rebuilt x{RUNS}",
                     "accuracies": " ".join(f"{a:.4f}" for a in t1),
                     "spread": round(max(t1) - min(t1), 4),
                     "kind": f"reproduced {sum(r['reproduced'] for r in rebuilt)}/{RUNS}, "
                             f"{rebuilt[0]['predictions']['same_labels']}/"
                             f"{rebuilt[0]['predictions']['rows']} same labels, sha256 "
                             f"{'equal' if rebuilt[0]['checks']['sha256'] else 'differs'}"})

        resp = api.post("/models/model_final_v2/rebuild")
        rows.append({"step": "rebuild model_final_v2", "status": resp.status_code,
                     "kind": resp.json()["message"][:90] + " ..."})
    with Client(stack.url("predictor")) as predictor:
        resp = predictor.post("/admin/load", json={"name": "iris_laptop", "version": "1.0.0"})
        rows.append({"step": "predictor loads iris_laptop", "status": resp.status_code,
                     "kind": resp.json()["message"]})
    picture = draw(notebook, other, t1, out / "only_me_spread.png")
    if picture is not None:
        rows.append({"step": "picture", "kind": str(picture)})
    return rows
