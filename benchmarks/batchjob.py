"""The S4 half of the pattern benchmark: a real batch job's rows/s against onnxruntime's own.

`run_job` adds rows to the batch pattern's DWH through its API, starts an on-demand job and
waits for it; its rate is the rows predicted over the job's own `took_s` (planning to the last
chunk). `onnxruntime_rows_per_s` runs `session.run` in this process on the same ONNX file,
with the session options the pattern's worker uses, over the same rows in the same chunk size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from patternkit.client import IRIS_ROWS
from patternkit.models import resolve_artifact

FINAL = frozenset({"succeeded", "partial", "failed"})
MAX_ROWS_PER_POST = 10_000  # the API's default limit per POST /rows


@dataclass(frozen=True)
class JobResult:
    rows: int
    took_s: float
    wall_s: float
    status: str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.took_s if self.took_s > 0 else float("nan")


def make_rows(n: int, seed: int) -> list[list[float]]:
    """`n` iris-like rows: the three reference rows with a little noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray([row for row, _ in IRIS_ROWS], dtype=float)
    picked = base[rng.integers(0, len(base), n)] + rng.normal(0.0, 0.2, (n, base.shape[1]))
    return np.round(np.clip(picked, 0.1, None), 2).tolist()


def run_job(api_url: str, rows: list[list[float]], timeout_s: float = 300.0) -> JobResult:
    """Load `rows` into the DWH, run one on-demand job over them, wait until it settles."""
    with httpx.Client(base_url=api_url, timeout=30.0) as client:
        for start in range(0, len(rows), MAX_ROWS_PER_POST):
            client.post("/rows", json={"rows": rows[start:start + MAX_ROWS_PER_POST]}
                        ).raise_for_status()
        began = time.perf_counter()
        reply = client.post("/jobs")
        reply.raise_for_status()
        job_id = reply.json()["job_id"]
        deadline = began + timeout_s
        while True:
            view = client.get(f"/jobs/{job_id}").raise_for_status().json()
            if view["status"] in FINAL:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"batch job {job_id} not done after {timeout_s:.0f}s: {view}")
            time.sleep(0.05)
    return JobResult(int(view["predicted"]), float(view["took_s"] or 0.0),
                     time.perf_counter() - began, str(view["status"]))


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Run this thread on `cpus` for a while (where the pattern's worker runs)."""
    if not cpus or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def onnxruntime_rows_per_s(
    model_dir: Path, rows: list[list[float]], chunk_size: int, min_seconds: float = 1.0
) -> float:
    """Rows/s of `session.run` on the model file, in chunks of `chunk_size`, at least
    `min_seconds` of passes over `rows` (the first pass is a warm-up)."""
    model_file, _ = resolve_artifact(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as patternkit.models.OnnxModel: one thread per process
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    X = np.asarray(rows, dtype=np.float32)
    chunks = [X[i:i + chunk_size] for i in range(0, len(X), chunk_size)]
    for chunk in chunks:
        session.run(None, {name: chunk})
    done, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < min_seconds:
        for chunk in chunks:
            session.run(None, {name: chunk})
        done += len(X)
    return done / elapsed
