"""Demo traffic for S3: three jobs queued at once, polled until done, then found in the DB."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.db import make_engine
from patternkit.topology import Stack
from serving_patterns.asynchronous.worker import INFERENCE


def run(stack: Stack) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    with Client(stack.url()) as client:
        for features, expected in IRIS_ROWS:
            resp, ms = client.timed("POST", "/predict", json={"data": [features]})
            jobs.append({"id": resp.json()["job_id"], "input": features, "expected": expected,
                         "http": resp.status_code, "post_ms": round(ms, 1),
                         "sent": time.perf_counter(), "seen": []})

        def all_finished() -> bool:
            for job in jobs:
                if "body" in job:
                    continue
                body = client.get(f"/result/{job['id']}").json()
                if not job["seen"] or job["seen"][-1] != body["status"]:
                    job["seen"].append(body["status"])
                if body["status"] in ("done", "failed"):
                    job["body"], job["took_s"] = body, time.perf_counter() - job["sent"]
            return all("body" in job for job in jobs)

        wait_until(all_finished, 30, what="every job finishing")
    engine = make_engine(stack.url("db"))
    try:
        with engine.connect() as conn:
            ids = [job["id"] for job in jobs]
            stored = set(conn.scalars(sa.select(INFERENCE.c.job_id).where(
                INFERENCE.c.job_id.in_(ids))))
    finally:
        engine.dispose()
    return [
        {"job": job["id"][:8], "input": job["input"], "POST": job["http"],
         "post_ms": job["post_ms"], "statuses seen": " > ".join(job["seen"]),
         "done_after_s": round(job["took_s"], 2), "expected": job["expected"],
         "predicted": job["body"].get("prediction", [job["body"].get("error")])[0],
         "in inference DB": job["id"] in stored}
        for job in jobs
    ]
