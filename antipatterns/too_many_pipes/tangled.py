"""TA3's tangled pipeline: three jobs, each with its own ad-hoc reader, wired by hard-coded
paths into each other's folders.

Job A trains on petal rows from the web API (its reader swallows every error and returns no
rows), job B on sepal rows from SQLite (and scales them with job A's `stats.json`, because
it was there), job C on whole rows from the CSV file (and refuses to register unless it
beats job B's `metrics.json`). They run in the order someone wrote down: A, B, C. The
`experiment` flag adds what a tuning experiment added later: B tunes its C on job C's
evaluation, and C warm-starts from B's model. Nothing checks the wiring before it runs.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from antipatterns.too_many_pipes import ml
from antipatterns.too_many_pipes.runlog import RunLog


def fetch_petals_from_api(log: RunLog, url: str, token: str) -> list[dict[str, Any]]:
    """Job A's reader: urllib, its own auth header, and "robust" (errors become no rows)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            rows: list[dict[str, Any]] = json.loads(reply.read())["rows"]
    except Exception:
        log.touch("webapi", False)
        return []
    log.touch("webapi", True)
    return rows


def read_sepals_from_sqlite(log: RunLog, path: str) -> list[tuple[Any, ...]]:
    """Job B's reader: its own connection and SQL."""
    try:
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT sepal_length, sepal_width, species FROM sepal").fetchall()
        conn.close()
    except sqlite3.Error:
        log.touch("sqlite", False)
        raise
    log.touch("sqlite", True)
    return rows


def read_csv_rows(log: RunLog, path: str) -> list[dict[str, str]]:
    """Job C's reader: its own parsing."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        float(rows[0]["sepal_length"])
    except (OSError, KeyError, IndexError, ValueError):
        log.touch("csv", False)
        raise
    log.touch("csv", True)
    return rows


def job_a(log: RunLog, cfg: dict[str, Any], art: Path) -> None:
    with log.step("a", "gather"):
        rows = fetch_petals_from_api(log, cfg["webapi_url"], cfg["webapi_token"])
        X = np.asarray([[r["petal_length"], r["petal_width"]] for r in rows]).reshape(-1, 2)
        ml.gather(ml.Table(["petal_length", "petal_width"], X, [r["species"] for r in rows]),
                  art / "a/gather")
    with log.step("a", "prep"):
        ml.prep(art / "a/gather", art / "a/prep")
    with log.step("a", "train"):
        ml.train(art / "a/prep", art / "a/train")
    with log.step("a", "evaluate"):
        ml.evaluate(art / "a/train", art / "a/prep", art / "a/evaluate")
    with log.step("a", "build"):
        ml.build("pipes_a", art / "a/train", art / "a/prep", art / "a/evaluate",
                 art / "a/build", Path(cfg["repo_dir"]))


def job_b(log: RunLog, cfg: dict[str, Any], art: Path) -> None:
    with log.step("b", "gather"):
        rows = read_sepals_from_sqlite(log, cfg["sqlite_path"])
        X = np.asarray([r[:2] for r in rows], dtype=np.float32).reshape(-1, 2)
        ml.gather(ml.Table(["sepal_length", "sepal_width"], X, [r[2] for r in rows]),
                  art / "b/gather")
    with log.step("b", "prep"):  # cross edge: A's scale, read from A's folder
        stats = json.loads((art / "a/prep/stats.json").read_text())
        ml.prep(art / "b/gather", art / "b/prep", stats)
    with log.step("b", "train"):
        C = 1.0
        if cfg["experiment"]:  # cross edge added by the tuning experiment: C's evaluation
            C = 2.0 if json.loads((art / "c/evaluate/metrics.json").read_text())[
                "accuracy"] > 0.9 else 0.5
        ml.train(art / "b/prep", art / "b/train", C)
    with log.step("b", "evaluate"):
        ml.evaluate(art / "b/train", art / "b/prep", art / "b/evaluate")
    with log.step("b", "build"):
        ml.build("pipes_b", art / "b/train", art / "b/prep", art / "b/evaluate",
                 art / "b/build", Path(cfg["repo_dir"]))


def job_c(log: RunLog, cfg: dict[str, Any], art: Path) -> None:
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    with log.step("c", "gather"):
        rows = read_csv_rows(log, cfg["csv_path"])
        X = np.asarray([[float(r[f]) for f in features] for r in rows], dtype=np.float32)
        ml.gather(ml.Table(features, X, [r["species"] for r in rows]), art / "c/gather")
    with log.step("c", "prep"):
        ml.prep(art / "c/gather", art / "c/prep")
    with log.step("c", "train"):
        if cfg["experiment"]:  # cross edge: warm start from B's model
            (art / "b/train/model.pkl").read_bytes()
        ml.train(art / "c/prep", art / "c/train")
    with log.step("c", "evaluate"):  # cross edge: must beat B
        mine = ml.evaluate(art / "c/train", art / "c/prep", art / "c/evaluate")
        theirs = json.loads((art / "b/evaluate/metrics.json").read_text())
        if mine["accuracy"] < theirs["accuracy"]:
            raise ValueError(f"C ({mine['accuracy']}) does not beat B ({theirs['accuracy']})")
    with log.step("c", "build"):
        ml.build("pipes_c", art / "c/train", art / "c/prep", art / "c/evaluate",
                 art / "c/build", Path(cfg["repo_dir"]))


JOBS = (job_a, job_b, job_c)  # the order someone wrote down


def run(cfg: dict[str, Any], art: Path) -> dict[str, Any]:
    log = RunLog("tangled")
    for job in JOBS:
        try:
            job(log, cfg, art)
        except Exception:
            continue
    return log.report(rejected=None)
