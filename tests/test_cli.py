"""The CLI as a user runs it: `python -m patternkit demo` shows boot progress and a summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from patternkit.topology import find_pattern, load_topology

pytestmark = pytest.mark.integration


def demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATTERNKIT_RUNS_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "patternkit", "demo", *args], capture_output=True, text=True,
        env=env, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )


def summary_row(out: str, pattern: str) -> str:
    tail = out.split("== summary:", 1)[1]
    return next(line for line in tail.splitlines() if line.startswith(pattern))


def test_a_demo_shows_boot_progress_its_observations_and_a_summary(tmp_path: Path) -> None:
    done = demo(tmp_path, "web_single")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "== [1/1] S1 Web single:" in out
    # boot progress: which service is starting, and when it was ready
    assert re.search(r"\d\d:\d\d:\d\d trainer finished in \d+\.\ds", out)
    assert re.search(r"\d\d:\d\d:\d\d predictor-2 ready in \d+\.\ds", out)
    assert re.search(r"web_single: 4 processes up in \d+\.\ds", out)
    assert "== summary: 1 of 1 passed" in out
    row = summary_row(out, "S1 Web single")
    proves = load_topology(find_pattern("web_single")).proves
    assert proves and proves in row
    assert re.search(r"\s\d+\.\ds\s+pass\s", row)


def test_a_broken_pattern_is_a_fail_row_and_a_failing_exit(tmp_path: Path) -> None:
    done = demo(tmp_path, "web_single", "--set", "predictor.MODEL_PATH=/nonexistent")
    assert done.returncode == 1
    assert "demo of web_single failed: StackError" in done.stdout
    assert "== summary: 0 of 1 passed" in done.stdout
    assert re.search(r"\s-\s+fail\s", summary_row(done.stdout, "S1 Web single"))
