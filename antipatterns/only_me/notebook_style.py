"""TA1's only-me training, as one engineer's notebook exports it: run it, hand over the pickle.

The antipattern, kept on purpose: the cells share module globals (`X`, `y`, `model`, ...)
and only work in the order they were last run; the data is the engineer's own copy
(scikit-learn's bundled iris, not the DWH); the split and the estimator are unseeded, so
every run draws another split and reports another accuracy; the output is
`model_final_v2.pkl` and nothing else: no code version, no data hash, no seed, no library
versions. `python -m antipatterns.only_me.notebook_style` prints the accuracy.

NOTEBOOK_ENTROPY stands in for the fresh randomness each run of a notebook draws (an
integer: the split that run happened to get), so the demo and the tests are deterministic;
unset, the script is as unseeded as the original. NOTEBOOK_SKLEARN_DEFAULTS=0.21 stands in
for an unpinned machine with an old scikit-learn: LogisticRegression's defaults before 0.22
(liblinear, one-vs-rest), which an unpinned install gets without a word in the code.
NOTEBOOK_OUT is the laptop's folder.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

# --- cell 1: imports and "config" (globals every later cell reads) -------------------------
X: Any = None
y: Any = None
X_train: Any = None
X_test: Any = None
y_train: Any = None
y_test: Any = None
model: Any = None
accuracy: float = 0.0
C = 1.0


def cell_load() -> None:
    """cell 2: load the data (the laptop's copy)."""
    global X, y
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)


def cell_split() -> None:
    """cell 3: split (no random_state: "it doesn't matter, iris is easy")."""
    global X_train, X_test, y_train, y_test
    from sklearn.model_selection import train_test_split

    entropy = os.environ.get("NOTEBOOK_ENTROPY")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=int(entropy) if entropy else None)


def cell_train() -> None:
    """cell 4: train (C was 10 in an earlier run of cell 1; now it is whatever cell 1 says),
    with the library's defaults, whichever scikit-learn the machine has."""
    global model
    from sklearn.linear_model import LogisticRegression

    if os.environ.get("NOTEBOOK_SKLEARN_DEFAULTS") == "0.21":  # another machine's sklearn
        from sklearn.multiclass import OneVsRestClassifier

        model = OneVsRestClassifier(LogisticRegression(C=C, solver="liblinear"))
    else:
        model = LogisticRegression(C=C, max_iter=200)
    model.fit(X_train, y_train)


def cell_evaluate() -> None:
    """cell 5: evaluate."""
    global accuracy
    accuracy = float((model.predict(X_test) == y_test).mean())
    print(f"accuracy: {accuracy:.4f}")


def cell_save() -> Path:
    """cell 6: save what the team asked for."""
    out = Path(os.environ.get("NOTEBOOK_OUT", ".")) / "model_final_v2.pkl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        pickle.dump(model, handle)
    print(f"saved {out}")
    return out


if __name__ == "__main__":  # "Run all"
    cell_load()
    cell_split()
    cell_train()
    cell_evaluate()
    cell_save()
