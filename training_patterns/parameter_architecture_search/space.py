"""The search spaces of T3 and the trial's work: suggest, cross-validate, report per fold.

A space is named: `families` is conditional (a family in {logreg, rf, mlp}, then that
family's own parameters), `mlp` searches an architecture (number of hidden layers and each
layer's width, activation), `rf` and `logreg` one family's hyper-parameters. Every trial
cross-validates on the training split of iris and reports the running mean accuracy after
each fold (`trial.report`), so the pruner can stop it early (`trial.should_prune`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

SpaceName = Literal["families", "mlp", "rf", "logreg"]
SPACES: dict[str, str] = {
    "families": "family in {logreg, rf, mlp}, then that family's own parameters",
    "mlp": "MLP architecture: 1-3 hidden layers of 2-16 units, activation, alpha",
    "rf": "random forest: trees, depth, min samples per leaf",
    "logreg": "logistic regression: C (log scale)",
}
FOLDS = 3
DATASET = "iris"
TEST_SIZE = 0.3
SPLIT_SEED = 7  # the held-out split is fixed for every search, so metrics compare


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """X_train, X_test, y_train, y_test, feature names, class names (held-out = test)."""
    from sklearn.model_selection import train_test_split

    from patternkit.models import load_dataset

    X, y, features, classes = load_dataset(DATASET)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return X_train, X_test, y_train, y_test, features, classes


def suggest(trial: Any, space: str) -> dict[str, Any]:
    """Ask the trial for one point of `space`; returns the parameters it suggested."""
    family = trial.suggest_categorical("family", ["logreg", "rf", "mlp"]) \
        if space == "families" else space
    if family == "logreg":
        trial.suggest_float("C", 1e-4, 1e2, log=True)
    elif family == "rf":
        trial.suggest_int("n_estimators", 5, 30)
        trial.suggest_int("max_depth", 1, 8)
        trial.suggest_int("min_samples_leaf", 1, 20)
    elif family == "mlp":
        layers = trial.suggest_int("n_layers", 1, 3)
        for i in range(1, layers + 1):
            trial.suggest_int(f"units_l{i}", 2, 16, log=True)
        trial.suggest_categorical("activation", ["relu", "tanh"])
        trial.suggest_float("alpha", 1e-5, 1e-1, log=True)
    else:
        raise ValueError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")
    return dict(trial.params)


def family_of(space: str, params: dict[str, Any]) -> str:
    return str(params.get("family", space))


def build(space: str, params: dict[str, Any], seed: int) -> Any:
    """The scikit-learn pipeline (scaler + estimator) for a point of `space`."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    family = family_of(space, params)
    clf: Any
    if family == "logreg":
        clf = LogisticRegression(C=params["C"], max_iter=500, random_state=seed)
    elif family == "rf":
        clf = RandomForestClassifier(
            n_estimators=params["n_estimators"], max_depth=params["max_depth"],
            min_samples_leaf=params["min_samples_leaf"], random_state=seed)
    else:
        shape = tuple(params[f"units_l{i}"] for i in range(1, params["n_layers"] + 1))
        clf = MLPClassifier(hidden_layer_sizes=shape, activation=params["activation"],
                            alpha=params["alpha"], max_iter=200, random_state=seed)
    return Pipeline([("scaler", StandardScaler()), ("clf", clf)])


def objective(trial: Any, space: str, seed: int, X: np.ndarray, y: np.ndarray) -> float:
    """Cross-validate the suggested point; report the running mean after each fold, and
    raise optuna.TrialPruned when the pruner says so."""
    import warnings

    import optuna
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold

    params = suggest(trial, space)
    scores: list[float] = []
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    for step, (fit, held) in enumerate(folds.split(X, y), start=1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = build(space, params, seed).fit(X[fit], y[fit])
        scores.append(float((model.predict(X[held]) == y[held]).mean()))
        mean = float(np.mean(scores))
        trial.report(mean, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {step} at {mean:.4f}")
    return float(np.mean(scores))
