"""The pytest plugin behind every pattern's integration tests (loaded with `-p patternkit.testing`).

`stack` boots the topology of the pattern under test (found from the test file's folder) once
and shares it until the tests move on to another pattern, and `entry` is a client for its
entry service; `fresh_stack(env=...)` boots a private copy for a test that kills services or
needs other settings, and `extra_instance(stack, service, env)` one more process of a service
beside the shared stack, with other settings, watched from its first second. When a test
fails, the log tail of every service it used is attached to the report.
`bad_predict_bodies(n_features, max_rows)` (`BAD_PREDICT_BODIES` for iris) and `post_body` are
the shared bad-input cases; `check_picture` is what a demo's PNG must pass.

The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup` in pyproject.toml; `-n 0`
runs it in one process): every test of a pattern is put in that pattern's group, so one
worker runs them all, one after another, and boots the pattern's shared stack once. Each
worker has its own run directories (tmp_path_factory) and free ports.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from patternkit.client import Client
from patternkit.infra import free_port
from patternkit.topology import Stack
from patternkit.topology.schema import TOPOLOGY_FILE

STACKS_ATTR = "_patternkit_stacks"

ROW = [5.1, 3.5, 1.4, 0.2]


def bad_predict_bodies(
    n_features: int = 4, max_rows: int = 1000
) -> list[tuple[object, int, str]]:
    """Predict bodies that every service taking `{"data": [[...], ...]}` must refuse, for a
    model of `n_features` inputs and a MAX_BATCH_ROWS of `max_rows`: (body: a JSON value, or
    a str sent as is; status; text the error message contains)."""
    row = [round(0.5 + i / 10, 1) for i in range(n_features)]
    rest = ", ".join(str(v) for v in row[1:])
    head = f", {rest}" if rest else ""
    return [
        ({"data": [row[:-1] or [*row, 1.0]]}, 422, f"expected {n_features} features"),
        ({"data": []}, 422, "body.data"),
        ({"rows": [row]}, 422, "body.data"),
        (f'{{"data": [[NaN{head}]]}}', 422, "finite"),
        (f'{{"data": [[1e999{head}]]}}', 422, "finite"),
        ({"data": [["a", *row[1:]]]}, 422, "body.data.0.0"),
        ({"data": [[True, *row[1:]]]}, 422, "body.data.0.0"),  # a bool is not a number
        ({"data": [row, [str(row[0]), *row[1:]]]}, 422, "body.data.1.0"),  # nor a numeric string
        ("{not json", 422, "JSON"),
        ({"data": [row] * (max_rows + 1)}, 413, "MAX_BATCH_ROWS"),
    ]


# the iris predictors' cases (4 features, MAX_BATCH_ROWS 1000)
BAD_PREDICT_BODIES = bad_predict_bodies()


def post_body(client: Client, path: str, body: object) -> httpx.Response:
    """POST `body` as JSON, or a str as raw bytes (to send NaN or broken JSON)."""
    headers = {"content-type": "application/json"}
    if isinstance(body, str):
        return client.post(path, content=body, headers=headers)
    return client.post(path, json=body, headers=headers)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_picture(path: Path, min_colors: int = 64, min_size: tuple[int, int] = (600, 400)
                  ) -> dict[str, int]:
    """Assert that `path` is a PNG worth looking at: the signature, at least `min_size`
    pixels, and more than `min_colors` distinct colours (a blank or one-colour image has a
    few). Returns its width, height and colour count."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG (starts {data[:8]!r})"
    assert data[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_size[0] and height >= min_size[1], (
        f"{path} is {width}x{height} pixels, under {min_size[0]}x{min_size[1]}"
    )
    from PIL import Image  # lazily: only the picture tests need it (matplotlib brings it)

    with Image.open(path) as image:
        found = image.convert("RGBA").getcolors(maxcolors=width * height)  # decodes it all
    colors = len(found or [])
    assert colors > min_colors, f"{path} has only {colors} distinct colours: blank?"
    return {"width": width, "height": height, "colors": colors, "bytes": len(data)}
@dataclass(frozen=True)
class Instance:
    """An extra process of a topology service: where it listens and logs."""

    name: str
    url: str
    log_path: Path
    popen: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def extra_instance(
    stack: Stack, service: str, env: dict[str, str] | None = None, name: str | None = None
) -> Iterator[Instance]:
    """One more process of the app `service`, as the stack runs it (same command and settings,
    `env` on top) on a free port; it is not waited for, so a test sees it from its first
    request on, and it is stopped (its process group, by pid) when the block ends."""
    base = stack.proc(service)
    if base.kind != "app":
        raise ValueError(f"{service} is not an app service")
    port = free_port()
    argv = list(base.argv)
    argv[argv.index("--port") + 1] = str(port)
    name = name or f"{service}-extra-{port}"
    log_path = stack.log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv, cwd=stack.project, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **base.env, "INSTANCE_NAME": name, **(env or {})},
        )
    try:
        yield Instance(name, f"http://127.0.0.1:{port}", log_path, popen)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=stack.grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=stack.grace)


def find_pattern_folder(test_path: Path) -> Path | None:
    """The pattern folder (holding a topology.toml) that a test file is in, if any."""
    for parent in test_path.resolve().parents:
        if (parent / TOPOLOGY_FILE).is_file():
            return parent
    return None


def pattern_folder(test_path: Path) -> Path:
    folder = find_pattern_folder(test_path)
    if folder is None:
        raise pytest.UsageError(f"{test_path} is not inside a pattern folder (no {TOPOLOGY_FILE})")
    return folder


class SharedStacks:
    """At most one shared stack alive at a time: the one of the pattern being tested."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.folder: Path | None = None
        self.stack: Stack | None = None
        self.error: BaseException | None = None

    def get(self, folder: Path) -> Stack:
        if folder != self.folder:
            self.close()
            self.folder = folder
            try:
                stack = Stack(folder, self.factory.mktemp(folder.name))
                stack.__enter__()
                self.stack = stack
            except BaseException as exc:
                self.error = exc
        if self.error is not None:
            raise self.error
        assert self.stack is not None
        return self.stack

    def close(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.folder, self.stack, self.error = None, None, None


def _remember(node: pytest.Item | Any, stack: Stack) -> None:
    stacks = getattr(node, STACKS_ATTR, [])
    stacks.append(stack)
    setattr(node, STACKS_ATTR, stacks)


@pytest.fixture(scope="session")
def _shared_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStacks]:
    shared = SharedStacks(tmp_path_factory)
    yield shared
    shared.close()


@pytest.fixture
def stack(request: pytest.FixtureRequest, _shared_stacks: SharedStacks) -> Stack:
    """The pattern's topology, booted once and shared by its tests."""
    booted = _shared_stacks.get(pattern_folder(request.path))
    _remember(request.node, booted)
    return booted


@pytest.fixture
def entry(stack: Stack) -> Iterator[Client]:
    """A client for the entry service of the shared stack."""
    with Client(stack.url()) as client:
        yield client


@pytest.fixture
def fresh_stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """A factory: `fresh_stack(env={"predictor": {"DELAY_MS": "800"}})` boots a private copy."""
    folder = pattern_folder(request.path)
    made: list[Stack] = []

    def boot(env: dict[str, dict[str, str]] | None = None, **kwargs: Any) -> Stack:
        booted = Stack(folder, tmp_path / f"stack-{len(made)}", env=env, **kwargs)
        made.append(booted)
        _remember(request.node, booted)
        booted.start()
        return booted

    yield boot
    for booted in reversed(made):
        booted.stop()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    folders: dict[Path, Path | None] = {}
    for item in items:
        if {"stack", "fresh_stack"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        path = Path(item.path)
        if path not in folders:
            folders[path] = find_pattern_folder(path)
        # `--dist loadgroup`: one worker runs all of a pattern's tests, so its shared stack
        # boots once; a core test module is a group of its own (its module fixtures, once)
        folder = folders[path]
        group = f"pattern:{folder.name}" if folder is not None else f"module:{path.stem}"
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for booted in getattr(item, STACKS_ATTR, []):
            for name, tail in booted.log_tails(25).items():
                report.sections.append((f"log tail: {booted.topology.name}/{name}", tail))
    return report
