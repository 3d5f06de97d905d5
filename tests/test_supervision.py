"""The runner as a supervisor: services that exit, restart policies, and `ctl` from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from patternkit.client import wait_until
from patternkit.infra import free_port
from patternkit.topology import Stack, StackError, Topology

READY = "print('ready', flush=True)"
SLEEPER = ["{python}", "-c", f"import time; {READY}; time.sleep(120)"]


def topo(services: dict[str, Any]) -> Topology:
    return Topology.model_validate(
        {"name": "sup", "id": "X", "title": "t", "summary": "s", "category": "serving",
         "entry": next(iter(services)), "services": services}
    )


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"run": SLEEPER, "ready_log": "ready", **extra}


def state(stack: Stack, name: str) -> str:
    return stack.status(name)[0].state


def events(stack: Stack) -> str:
    path = stack.run_dir / "events.log"
    return path.read_text() if path.is_file() else ""


def test_a_killed_service_comes_back_under_on_failure(tmp_path: Path) -> None:
    t = topo({"svc": sleeper(restart="on-failure"), "other": sleeper()})
    with Stack(t, tmp_path) as stack:
        first = stack.status("svc")[0].pid
        stack.kill("svc")
        wait_until(lambda: state(stack, "svc") == "up", timeout=30, what="svc back up")
        again = stack.status("svc")[0]
        assert again.pid is not None and again.pid != first
        assert again.restarts == 1
        assert again.exit == "SIGKILL"
        assert state(stack, "other") == "up"
        assert "svc exited (SIGKILL); back in 0.5s (restart=on-failure)" in events(stack)


def test_under_no_a_killed_service_stays_down_and_the_rest_keep_running(tmp_path: Path) -> None:
    t = topo({"svc": sleeper(), "other": sleeper()})
    with Stack(t, tmp_path) as stack:
        other_pid = stack.status("other")[0].pid
        stack.kill("svc")
        down = stack.status("svc")[0]
        assert (down.state, down.pid, down.exit) == ("exited", None, "SIGKILL")
        assert "svc exited (SIGKILL); it stays down (restart=no)" in events(stack)
        assert (state(stack, "other"), stack.status("other")[0].pid) == ("up", other_pid)
        stack.start_service("svc")
        assert state(stack, "svc") == "up"


def test_on_failure_leaves_a_clean_exit_down_and_always_brings_it_back(tmp_path: Path) -> None:
    code = f"import sys, time; {READY}; time.sleep(0.3); sys.exit(0)"
    clean = {"run": ["{python}", "-c", code], "ready_log": "ready"}
    t = topo({"keep": sleeper(), "once": {**clean, "restart": "on-failure"},
              "again": {**clean, "restart": "always"}})
    with Stack(t, tmp_path) as stack:
        wait_until(lambda: stack.status("again")[0].restarts >= 2, timeout=30,
                   what="`always` restarting a clean exit")
        assert state(stack, "once") == "exited"
        assert stack.status("once")[0].exit == "code 0"
        assert stack.status("once")[0].restarts == 0


def test_a_crash_loop_backs_off(tmp_path: Path) -> None:
    code = f"import sys, time; {READY}; time.sleep(0.1); sys.exit(3)"
    t = topo({"keep": sleeper(),
              "crash": {"run": ["{python}", "-c", code], "ready_log": "ready",
                        "restart": "on-failure"}})
    with Stack(t, tmp_path) as stack:
        wait_until(lambda: "back in 2.0s" in events(stack), timeout=30, what="third backoff")
        log = events(stack)
        assert log.index("back in 0.5s") < log.index("back in 1.0s") < log.index("back in 2.0s")
        assert "crash exited (code 3)" in log


def test_stop_is_not_undone_by_the_policy_and_start_brings_it_back(tmp_path: Path) -> None:
    t = topo({"svc": sleeper(restart="always"), "other": sleeper()})
    with Stack(t, tmp_path) as stack:
        stack.stop_service("svc")
        assert state(stack, "svc") == "stopped"
        with pytest.raises(StackError, match="stopped"):
            stack.pause("svc")
        stack.start_service("svc")
        assert state(stack, "svc") == "up"
        stack.start_service("svc")  # already running: left as it is
        assert stack.status("svc")[0].restarts == 1


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pause_and_resume(tmp_path: Path) -> None:
    t = topo({"svc": sleeper()})
    with Stack(t, tmp_path) as stack:
        pid = stack.status("svc")[0].pid
        assert pid is not None
        stack.pause("svc")
        assert state(stack, "svc") == "paused"
        wait_until(lambda: process_state(pid) == "T", timeout=5, what="the process stopped")
        stack.resume("svc")
        assert state(stack, "svc") == "up"
        wait_until(lambda: process_state(pid) != "T", timeout=5, what="the process going on")
        with pytest.raises(StackError, match="not paused"):
            stack.resume("svc")
        stack.pause("svc")  # a paused service still stops within the grace period
        stack.stop_service("svc")
        assert state(stack, "svc") == "stopped"


def test_a_restart_passes_new_settings(tmp_path: Path) -> None:
    code = f"import os, time; print('COLOUR=' + os.environ['COLOUR']); {READY}; time.sleep(60)"
    t = topo({"svc": {"run": ["{python}", "-c", code], "ready_log": "ready",
                      "env": {"COLOUR": "red"}}})
    with Stack(t, tmp_path) as stack:
        stack.restart("svc", env={"COLOUR": "blue"})
        assert "COLOUR=blue" in stack.log_tail("svc", 3)
        with pytest.raises(StackError, match="no service or instance 'nope'"):
            stack.kill("nope")


def ctl(*words: str, runs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patternkit", "ctl", *words], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PATTERNKIT_RUNS_DIR": str(runs)},
    )


def test_ctl_from_another_process_drives_the_stack_that_run_booted(tmp_path: Path) -> None:
    folder, runs = tmp_path / "pattern", tmp_path / "runs"
    folder.mkdir()
    code = f"import os, time; print('COLOUR=' + os.environ.get('COLOUR', '')); {READY}; " \
           "time.sleep(120)"
    (folder / "topology.toml").write_text(textwrap.dedent(f"""\
        name = "ctl_demo"
        id = "X"
        title = "ctl demo"
        summary = "two sleepers"
        category = "serving"
        entry = "front"

        [services.front]
        run = {json.dumps(SLEEPER)}
        ready_log = "ready"

        [services.worker]
        run = {json.dumps(["{python}", "-c", code])}
        ready_log = "ready"
    """))
    run = subprocess.Popen(
        [sys.executable, "-m", "patternkit", "run", str(folder), "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PATTERNKIT_RUNS_DIR": str(runs)},
    )
    try:
        wait_until(lambda: run.poll() is not None or list(runs.glob("*/control.json")),
                   timeout=60, what="the running stack's control file")
        assert run.poll() is None, run.communicate()[0]
        status = ctl("status", runs=runs)
        assert status.returncode == 0, status.stderr
        assert "worker" in status.stdout and " up " in status.stdout

        killed = ctl("kill", "worker", runs=runs)
        assert killed.returncode == 0, killed.stderr
        assert "worker: killed" in killed.stdout
        row = next(line for line in killed.stdout.splitlines() if line.startswith("worker "))
        assert "exited" in row and "SIGKILL" in row
        assert "front" in killed.stdout  # the rest of the stack is still there

        started = ctl(str(folder), "restart", "worker", "--set", "COLOUR=green", runs=runs)
        assert started.returncode == 0, started.stderr
        row = next(line for line in started.stdout.splitlines() if line.startswith("worker "))
        assert " up " in row
        logs = next(runs.glob("*/logs/worker.log")).read_text()
        assert "COLOUR=green" in logs

        bad = ctl("pause", "nope", runs=runs)
        assert bad.returncode == 1 and "no service or instance 'nope'" in bad.stderr
        assert ctl("explode", runs=runs).returncode == 2
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert "worker exited (SIGKILL); it stays down" in out  # reported where `run` runs
    assert not list(runs.glob("*/control.json"))
    gone = ctl("status", runs=runs)
    assert gone.returncode == 2 and "no running stack" in gone.stderr
