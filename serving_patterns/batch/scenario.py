"""Demo traffic for S4: an on-demand job, NaN rows and their rerun, then a scheduled run.

It loads 500 rows and triggers a job; loads rows with NaN, null and infinity (the job ends
`partial`), fixes them and reruns exactly the failed ids; then speeds the schedule up to 2 s
and shows new rows predicted with no trigger (twice); last, the ports that are listening.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from patternkit.client import IRIS_ROWS, Client, wait_until
from patternkit.topology import Stack

DEMO_INTERVAL_S = 2.0  # the topology says hourly; the demo speeds the scheduler up


def listening_ports(pgid: int) -> set[int]:
    """TCP ports on which any process of the process group `pgid` listens (from /proc)."""
    inodes: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            after_name = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(after_name[2]) != pgid:  # state, ppid, pgrp
                continue
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:["):-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def finished(client: Client, job_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "partial", "failed") else None

    return wait_until(check, 30, interval=0.1, what=f"job {job_id}")


def observed(step: str, job: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step,
        "job": job["job_id"][:8],
        "trigger": job["triggered_by"],
        "scope": job["scope"],
        "status": job["status"],
        "rows": job["total"],
        "predicted": job["predicted"],
        "failed_ids": job["failed_ids"],
        "chunks": f"{job['chunks']['done']}/{job['chunks']['total']}",
        "took_s": job["took_s"],
    }


def run(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    with Client(stack.url()) as client:
        data = np.round(rng.uniform(low, high, size=(500, 4)), 1).tolist()
        client.post("/rows", json={"rows": data}).raise_for_status()
        job = finished(client, client.post("/jobs").json()["job_id"])
        rows.append(observed("500 rows, POST /jobs", job))

        good = [list(IRIS_ROWS[i % 3][0]) for i in range(20)]
        text = [",".join(map(repr, row)) for row in good]
        text[2], text[9], text[15] = "NaN,3.5,1.4,0.2", "7.0,null,4.7,1.4", "6.3,3.3,Infinity,2.5"
        body = '{"rows": [' + ",".join(f"[{t}]" for t in text) + "]}"
        ids = client.post("/rows", content=body,
                          headers={"content-type": "application/json"}).json()["ids"]
        job = finished(client, client.post("/jobs").json()["job_id"])
        rows.append(observed("20 rows, 3 NaN/null/inf", job))

        for i in (2, 9, 15):
            client.request("PUT", f"/rows/{ids[i]}", json={"features": good[i]}).raise_for_status()
        rerun = client.post(f"/jobs/{job['job_id']}/rerun").json()
        rows.append(observed("fixed upstream, rerun", finished(client, rerun["job_id"])))

        stack.restart("scheduler", env={"SCHEDULE_INTERVAL_S": str(DEMO_INTERVAL_S)})
        for n, batch in enumerate((data[:10], data[10:20]), 1):
            sent = time.monotonic()
            ids = client.post("/rows", json={"rows": batch}).json()["ids"]
            wait_until(lambda: client.get("/summary").json()["unpredicted"] == 0, 30,
                       interval=0.05, what="the scheduled run")
            waited = time.monotonic() - sent
            job_id = client.get(f"/rows/{ids[0]}").json()["result"]["job_id"]
            rows.append(observed(f"10 rows, no trigger #{n}: {waited:.1f}s later",
                                 client.get(f"/jobs/{job_id}").json()))

        listens = []
        for name in ("api", "worker", "scheduler"):
            pid = stack.status(name)[0].pid
            ports = sorted(listening_ports(pid)) if pid else []
            listens.append(f"{name} {ports[0] if ports else 'none'}")
        rows.append({"step": "listening: " + ", ".join(listens)})
    return rows
