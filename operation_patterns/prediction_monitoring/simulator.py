"""Seeded client traffic for O5 and OA1: batches drawn from rows the model never trained on.

`Traffic(seed).batch(n)` draws `n` rows of the held-out split (the 30% `train_model` keeps
back; of a small dataset, every row) with a small jitter, so no two requests repeat; `shift`
moves features by a number of training standard deviations (drift), `only_class` keeps the
rows of one true class (a class flood), `order` sends the columns in another order (OA1's
client bug: every row still has as many finite numbers, so the schema holds). `send` posts
batches at a steady rate (the monitor's traffic rules count requests per second) and returns
the request ids; `burst` sends many requests at once from several threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.model_selection import train_test_split

from patternkit.client import Client
from patternkit.models import VARIANTS, variant_data

MODEL = "synthetic_lr"
JITTER_SD = 0.02  # in training standard deviations: rows differ, their distribution does not


class Traffic:
    def __init__(self, seed: int = 0, model: str = MODEL, split_seed: int = 42,
                 held_out_only: bool = True) -> None:
        X, y, self.features, self.classes = variant_data(VARIANTS[model])
        X_train, X_held, _, y_held = train_test_split(X, y, test_size=0.3,
                                                      random_state=split_seed, stratify=y)
        # a small dataset's held-out rows are too few to stand for its distribution: all rows
        self.rows, self.labels = ((X_held.astype(np.float64), y_held) if held_out_only
                                  else (X.astype(np.float64), y))
        self.sd = X_train.astype(np.float64).std(axis=0)
        self.rng = np.random.default_rng(seed)

    def batch(
        self, n: int = 50, *, shift: dict[int, float] | None = None,
        only_class: int | None = None, order: Sequence[int] | None = None,
    ) -> list[list[float]]:
        pool = self.rows if only_class is None else self.rows[self.labels == only_class]
        X = pool[self.rng.integers(0, len(pool), n)]
        X = X + self.rng.normal(0, JITTER_SD, X.shape) * self.sd
        for feature, sds in (shift or {}).items():
            X[:, feature] += sds * self.sd[feature]
        if order is not None:
            X = X[:, list(order)]
        return np.round(X, 4).tolist()


def send(client: Client, batches: Sequence[list[list[float]]], prefix: str,
         rps: float = 10.0) -> list[str]:
    """POST each batch, one every 1/rps seconds (a schedule fixed from the start, so a slow
    reply does not slow the rate down); every answer must be 200. The request ids, in order."""
    rids, started = [], time.monotonic()
    for i, rows in enumerate(batches):
        due = started + i / rps
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        rid = f"{prefix}-{i}"
        resp = client.post("/predict", json={"data": rows}, headers={"x-request-id": rid})
        assert resp.status_code == 200, resp.text
        rids.append(rid)
    return rids


def burst(client: Client, rows: Sequence[list[float]], prefix: str, threads: int = 8
          ) -> list[int]:
    """One request per row, `threads` at a time, as fast as they go; the statuses."""
    def one(i: int) -> int:
        resp = client.post("/predict", json={"data": [rows[i]]},
                           headers={"x-request-id": f"{prefix}-{i}"})
        return resp.status_code

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(rows))))
