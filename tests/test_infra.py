"""patternkit.infra.port_is_free: the check `make run` makes before it boots on a fixed port.

A port is taken while something listens on it, and free once the listener has gone, even
while its last connections sit in TIME_WAIT (about a minute): uvicorn binds with
SO_REUSEADDR and starts fine then, so the check must not refuse it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from patternkit.client import wait_until
from patternkit.infra import port_is_free

TIME_WAIT = "06"  # the state column of /proc/net/tcp


def listener(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (a free port by default), set up as uvicorn's is."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def plain_bind_refused(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR fails: some socket still holds the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def local_states(port: int) -> set[str]:
    """The TCP states of the IPv4 sockets whose local port is `port` (Linux)."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            states.add(fields[3])
    return states


def test_a_port_with_a_listener_is_taken() -> None:
    with listener() as server:
        port = server.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)


def test_a_port_whose_connections_are_in_time_wait_is_free_once_its_listener_closed() -> None:
    server = listener()
    port = server.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        conn, _ = server.accept()
        conn.close()  # the server closes first, so its side of the connection enters TIME_WAIT
        assert client.recv(1) == b""
    server.close()
    if Path("/proc/net/tcp").is_file():
        wait_until(lambda: TIME_WAIT in local_states(port), 5, what=f"TIME_WAIT on port {port}")
    assert plain_bind_refused(port)  # the old check said "taken" here, for about a minute
    assert port_is_free(port)
    with listener(port) as again:  # and a listener bound as uvicorn binds starts there
        assert again.getsockname()[1] == port
