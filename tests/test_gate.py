"""patternkit.gate: the init-container wait and a Job's completion mark, on real sockets."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from patternkit import gate


@pytest.fixture
def http_url() -> Iterator[str]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_opens_when_everything_is_there(tmp_path: Path, http_url: str) -> None:
    mark = tmp_path / "done"
    mark.write_text("1\n")
    host, port = http_url.removeprefix("http://").split(":")
    assert gate.wait([f"{host}:{port}"], [f"{http_url}/ready"], [str(mark)], timeout_s=5) == []


def test_wait_names_what_is_missing_at_its_deadline(tmp_path: Path, http_url: str) -> None:
    port = closed_port()
    missing = gate.wait([f"127.0.0.1:{port}"], [f"{http_url}/nope"], [str(tmp_path / "x")],
                        timeout_s=0.2, poll_s=0.05)
    assert missing == [f"tcp 127.0.0.1:{port}", f"http {http_url}/nope",
                       f"file {tmp_path / 'x'}"]


def test_wait_sees_a_file_that_appears_later(tmp_path: Path) -> None:
    mark = tmp_path / "later"
    writer = threading.Timer(0.2, mark.write_text, args=("1\n",))
    writer.start()
    try:
        assert gate.wait([], [], [str(mark)], timeout_s=10, poll_s=0.05) == []
    finally:
        writer.cancel()


def test_done_marks_success_only_and_clears_a_stale_mark(tmp_path: Path) -> None:
    mark = tmp_path / "jobs" / "trainer"
    assert gate.done(str(mark), [sys.executable, "-c", "pass"]) == 0
    assert mark.is_file()
    assert gate.done(str(mark), [sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert not mark.exists()


def test_the_command_line(tmp_path: Path) -> None:
    mark = tmp_path / "m"
    run = [sys.executable, "-m", "patternkit.gate"]
    ok = subprocess.run([*run, "done", str(mark), "--", sys.executable, "-c", "print('hi')"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "hi" in ok.stdout and mark.is_file()
    opened = subprocess.run([*run, "wait", "--file", str(mark), "--timeout", "5"],
                            capture_output=True, text=True, timeout=60)
    assert opened.returncode == 0 and "gate: open" in opened.stdout
    shut = subprocess.run([*run, "wait", "--file", str(tmp_path / "no"), "--timeout", "0"],
                          capture_output=True, text=True, timeout=60)
    assert shut.returncode == 1 and "gave up" in shut.stderr
    assert subprocess.run([*run, "sideways"], capture_output=True, timeout=60).returncode == 2
