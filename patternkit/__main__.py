"""The command line: `python -m patternkit list | run | demo | render | check`.

`run` boots a pattern in the foreground and prints its URLs; `demo` boots it, runs its
scenario, prints what was observed and tears down; `render` writes each pattern's
docker-compose.yml from its topology; `check` validates every topology and fails when a
rendered file is out of date. The Makefile's targets are thin calls to these.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from patternkit.catalogue import position, render_readme
from patternkit.catalogue import rows as catalogue_rows
from patternkit.client import format_table
from patternkit.infra import port_is_free
from patternkit.topology import (
    Stack,
    StackError,
    TopologyError,
    discover,
    find_pattern,
    load_topology,
    render_file,
    repo_root,
)

DEFAULT_PATTERN = "serving_patterns/web_single"


def run_dir_for(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return repo_root() / ".runs" / f"{name}-{stamp}"


def parse_sets(items: list[str] | None) -> dict[str, dict[str, str]]:
    """`service.VAR=value` items -> the runner's env overrides ({service: {VAR: value}})."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        target, eq, value = item.partition("=")
        service, dot, var = target.partition(".")
        if not eq or not dot or not service or not var:
            raise StackError(f"--set {item!r}: expected service.VAR=value")
        out.setdefault(service, {})[var] = value
    return out


def cmd_list(_: argparse.Namespace) -> int:
    print(format_table(catalogue_rows(repo_root())))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    folder = find_pattern(args.pattern)
    topology = load_topology(folder)
    if not port_is_free(args.port):
        print(f"port {args.port} is taken; pick another with PORT=... (make) or --port", flush=True)
        return 2
    stack = Stack(
        folder, run_dir_for(topology.name), entry_port=args.port, env=parse_sets(args.set)
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    where = folder.relative_to(repo_root())
    print(f"booting {topology.id} {topology.title} ({where}) ...", flush=True)
    with stack:
        rows = [{"service": p.name, "url": p.url, "log": p.log_path} for p in stack.procs.values()
                if not p.oneshot]
        print(format_table(rows))
        entry = stack.url()
        print(f"\n{topology.title} is up: {entry}  (docs: {entry}/docs)")
        example = topology.example
        headers = "".join(f" -H '{k}: {v}'" for k, v in example.headers.items())
        print(
            f"try:\n  curl -s -X POST {entry}{example.path} "
            f"-H 'content-type: application/json'{headers} -d '{example.body}'\n"
            "Ctrl-C stops every service.",
            flush=True,
        )
        while not stop.wait(0.5):
            dead = [p.name for p in stack.procs.values()
                    if p.popen and not p.oneshot and not p.alive]
            if dead:
                print(f"stopping: {', '.join(dead)} exited (see {stack.log_dir})", flush=True)
                return 1
        print("\nstopping ...", flush=True)
    return 0


def load_scenario(folder: Path, spec: str | None) -> Callable[[Stack], list[dict[str, Any]]]:
    module_name, _, func = (spec or "").partition(":")
    if not module_name:
        rel = folder.relative_to(repo_root())
        module_name, func = ".".join((*rel.parts, "scenario")), "run"
    module = importlib.import_module(module_name)
    scenario: Callable[[Stack], list[dict[str, Any]]] = getattr(module, func)
    return scenario


def demo_one(folder: Path, env: dict[str, dict[str, str]] | None = None) -> bool:
    topology = load_topology(folder)
    print(f"\n== {topology.id} {topology.title}: {topology.summary}", flush=True)
    scenario = load_scenario(folder, topology.scenario)
    started = time.perf_counter()
    try:
        with Stack(folder, run_dir_for(topology.name), env=env) as stack:
            took = time.perf_counter() - started
            print(f"booted in {took:.1f}s; running the scenario", flush=True)
            observed = scenario(stack)
    except (StackError, AssertionError) as exc:
        print(f"demo of {topology.name} failed: {exc}", flush=True)
        return False
    print(format_table(observed), flush=True)
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    root = repo_root()
    folders = [find_pattern(args.pattern)] if args.pattern else sorted(
        discover(root), key=lambda folder: position(folder, root)
    )
    env = parse_sets(args.set)
    results = [demo_one(folder, env) for folder in folders]
    return 0 if all(results) else 1


def rendered_files(root: Path) -> list[tuple[Path, str]]:
    """Every generated file with its expected text: compose files and the README table."""
    files = [render_file(load_topology(folder), folder, root) for folder in discover(root)]
    readme = root / "README.md"
    files.append((readme, render_readme(readme.read_text(), root)))
    return files


def cmd_render(_: argparse.Namespace) -> int:
    root = repo_root()
    for target, text in rendered_files(root):
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {target.relative_to(root)}")
    return 0


def cmd_check(_: argparse.Namespace) -> int:
    root = repo_root()
    problems: list[str] = []
    folders = discover(root)
    for folder in folders:
        rel = folder.relative_to(root)
        try:
            load_topology(folder)
        except TopologyError as exc:
            problems.append(str(exc))
            continue
        for needed in ("README.md", "scenario.py"):
            if not (folder / needed).is_file():
                problems.append(f"{rel}: no {needed}")
        if not list(folder.glob("tests/test_*.py")):
            problems.append(f"{rel}: no tests/test_*.py")
    try:
        for target, text in rendered_files(root):
            if not target.is_file() or target.read_text() != text:
                problems.append(f"{target.relative_to(root)} is out of date (run `make render`)")
    except (TopologyError, ValueError) as exc:
        problems.append(str(exc))
    for problem in problems:
        print(problem)
    verdict = f"{len(problems)} problems" if problems else "ok"
    print(f"checked {len(folders)} patterns: {verdict}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patternkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the catalogue and what is built").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="boot a pattern in the foreground")
    run.add_argument("pattern", nargs="?", default=DEFAULT_PATTERN)
    run.add_argument("--port", type=int, default=8000, help="port of the entry service")
    set_help = "override a service's setting: service.VAR=value (repeatable)"
    run.add_argument("--set", action="append", metavar="SERVICE.VAR=VALUE", help=set_help)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="boot, run the scenario, print observations, tear down")
    demo.add_argument("pattern", nargs="?", help="one pattern (default: every built pattern)")
    demo.add_argument("--set", action="append", metavar="SERVICE.VAR=VALUE", help=set_help)
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("render", help="write docker-compose.yml files").set_defaults(func=cmd_render)
    sub.add_parser("check", help="validate topologies and rendered files").set_defaults(
        func=cmd_check
    )
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (TopologyError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
