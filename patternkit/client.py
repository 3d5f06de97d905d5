"""The client harness for scenarios, tests and the CLI: timeouts, retries, readiness, stats.

`Client` wraps httpx with a timeout and retries on connection errors; `wait_until` is the one
way to wait for something (a deadline, never a fixed sleep); `burst` fires N requests at the
same instant; `Traffic` keeps steady traffic going and records every reply while a test
changes the service under it; `LatencyStats` summarises latencies; `print_table` shows a
scenario's observations.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

T = TypeVar("T")

# Known iris rows (sepal length, sepal width, petal length, petal width) and their class.
IRIS_ROWS: list[tuple[list[float], int]] = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
]


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_until(
    check: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `check` until it returns a truthy value, or raise WaitTimeout at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what} did not happen within {timeout:.1f}s (last: {last!r})")
        time.sleep(interval)


class Client:
    """A small synchronous HTTP client: base URL, timeout, retries on connection errors."""

    def __init__(self, base_url: str, timeout: float = 10.0, retries: int = 2) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                return self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if attempt == self.retries:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def timed(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        """(response, milliseconds) for one request."""
        start = time.perf_counter()
        resp = self.request(method, path, **kwargs)
        return resp, (time.perf_counter() - start) * 1000

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/stats").raise_for_status().json()
        return data

    def wait_ready(self, path: str = "/ready", timeout: float = 30.0) -> None:
        def ready() -> bool:
            try:
                return self.http.get(path, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, what=f"{self.base_url}{path} returning 200")


@dataclass
class LatencyStats:
    """Latencies in milliseconds and their summary."""

    samples: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    def percentile(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self.samples),
            "mean_ms": round(statistics.fmean(self.samples), 2) if self.samples else float("nan"),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


@dataclass
class BurstReply:
    """One request of a burst, as the caller saw it (header names in lower case)."""

    status: int
    ms: float
    body: Any
    headers: dict[str, str]
    sent: float = 0.0  # time.perf_counter() when the request was written


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> BurstReply:
    """Send one HTTP/1.1 request on an open connection and read the whole reply."""
    start = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError(f"a reply without content-length: {head[0]}")
        body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    ms = (time.perf_counter() - start) * 1000
    return BurstReply(int(head[0].split()[1]), ms, json.loads(body) if body else {}, headers,
                      start)


def burst(url: str, n: int, body: object) -> list[BurstReply]:
    """POST `body` as JSON to `url` `n` times at once, from a bare asyncio HTTP/1.1 client.

    All connections are opened first, then every request is written in one go: httpx spends
    more CPU per request than a proxy's shed decision, and on a busy 2-core machine it spread
    a burst of 30 over half a second, which measures the client instead of the server.
    """
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    path = target.path or "/"
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode() + payload

    async def fire() -> list[BurstReply]:
        conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n)))
        return list(await asyncio.gather(*(_exchange(r, w, request) for r, w in conns)))

    return asyncio.run(fire())


@dataclass(frozen=True)
class Sent:
    """One request of `Traffic` as its sender saw it (times from `time.monotonic()`)."""

    sender: int
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all (`error` says why)
    version: str | None  # the X-Model-Version header
    body_version: str | None  # the body's `version`, when it has one
    error: str | None = None


class Traffic:
    """`senders` threads, each sending `body` to `url` one request after another until
    stopped, every reply recorded: to count what callers see while a service changes under
    them (a model swap, a replica killed); `interval_s` paces each sender (a timeline that
    should not load the machine). Use as a context manager."""

    def __init__(self, url: str, body: object, senders: int = 4, timeout: float = 10.0,
                 interval_s: float = 0.0) -> None:
        self.url = url
        self.body = body
        self.senders = senders
        self.timeout = timeout
        self.interval_s = interval_s
        self._sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(i,), daemon=True,
                                          name=f"traffic-{i}") for i in range(senders)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _send(self, sender: int) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    resp = http.post(self.url, json=self.body)
                except httpx.HTTPError as exc:
                    sent = Sent(sender, started, time.monotonic(), None, None, None,
                                type(exc).__name__)
                else:
                    try:
                        parsed = resp.json()
                    except ValueError:
                        parsed = None
                    version = parsed.get("version") if isinstance(parsed, dict) else None
                    sent = Sent(sender, started, time.monotonic(), resp.status_code,
                                resp.headers.get("x-model-version"),
                                None if version is None else str(version),
                                None if resp.status_code == 200 else resp.text[:200])
                with self._lock:
                    self._sent.append(sent)
                if self.interval_s:
                    self._stop.wait(self.interval_s)

    def sent(self) -> list[Sent]:
        with self._lock:
            return list(self._sent)

    def failures(self) -> list[Sent]:
        return [s for s in self.sent() if s.status != 200]

    def by_sender(self) -> dict[int, list[Sent]]:
        """Each sender's replies in the order it sent them."""
        out: dict[int, list[Sent]] = {i: [] for i in range(self.senders)}
        for s in self.sent():
            out[s.sender].append(s)
        return out

    def wait_for(self, count: int, since: float | None = None, timeout: float = 30.0) -> None:
        """Until every sender has `count` replies to requests started after `since`."""
        def enough() -> bool:
            return all(sum(1 for s in sent if since is None or s.started > since) >= count
                       for sent in self.by_sender().values())

        wait_until(enough, timeout, what=f"{count} replies per sender")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(nothing observed)"
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(format_table(rows), flush=True)
