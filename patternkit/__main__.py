"""The command line: `python -m patternkit list | run | ctl | demo | render | check`.

`run` boots a pattern in the foreground, prints its URLs and keeps it up while services come
and go; `ctl` talks to that running stack from another terminal (status, stop, start,
restart, kill, pause, resume); `demo` boots a pattern, runs its scenario, prints what was
observed (and the pictures the scenario drew into the run directory) and tears down;
`render` writes each pattern's docker-compose.yml and k8s.yaml from its topology; `check`
validates every topology and fails when a rendered file is out of date.
The Makefile's targets are thin calls to these.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
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
from patternkit.logs import configure as configure_logs
from patternkit.topology import (
    Stack,
    StackError,
    TopologyError,
    discover,
    find_pattern,
    load_topology,
    render_file,
    render_k8s_file,
    repo_root,
)
from patternkit.topology.control import VERBS, ControlServer, running_stacks, send
from patternkit.topology.runner import describe_exit

DEFAULT_PATTERN = "serving_patterns/web_single"
CTL_HELP = "status | stop S | start S | restart S [--set VAR=value] | kill S | pause S | resume S"
MAKE_CTL_HELP = CTL_HELP.replace("[--set VAR=value]", '[SET="VAR=value"]')


def runs_root() -> Path:
    """Where run directories go: `.runs/` in the repository, or PATTERNKIT_RUNS_DIR."""
    override = os.environ.get("PATTERNKIT_RUNS_DIR")
    return Path(override) if override else repo_root() / ".runs"


def run_dir_for(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs_root() / f"{name}-{stamp}"


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
    where = folder.relative_to(repo_root()) if folder.is_relative_to(repo_root()) else folder
    print(f"booting {topology.id} {topology.title} ({where}) ...", flush=True)
    stack.on_event = lambda line: print(line, flush=True)  # boot progress, then exits
    with stack, ControlServer(stack, folder):
        print(format_table(status_rows(stack)))
        entry = stack.url()
        print(f"\n{topology.title} is up: {entry}  (docs: {entry}/docs)")
        example = topology.example
        headers = "".join(f" -H '{k}: {v}'" for k, v in example.headers.items())
        print(
            f"try:\n  curl -s -X POST {entry}{example.path} "
            f"-H 'content-type: application/json'{headers} -d '{example.body}'\n"
            f"break it from another terminal:\n  make ctl {MAKE_CTL_HELP}\n"
            "A service that exits is reported here; the rest keep running. "
            "Ctrl-C stops every service.",
            flush=True,
        )
        stop.wait()
        stack.on_event = None
        print("\nstopping ...", flush=True)
    return 0


def status_rows(stack: Stack) -> list[dict[str, Any]]:
    return [{"service": s.name, "state": s.state, "url": s.url or "-", "restart": s.restart,
             "log": stack.procs[s.name].log_path} for s in stack.status()]


def parse_ctl(words: list[str]) -> tuple[str | None, str, str | None]:
    """`[PATTERN] VERB [SERVICE]` -> (pattern, verb, service)."""
    pattern = None
    if words and words[0] not in VERBS:
        pattern, words = words[0], words[1:]
    if not words or words[0] not in VERBS:
        raise StackError(f"expected a command: {CTL_HELP}")
    if len(words) > 2:
        raise StackError(f"too many words: {' '.join(words)}; expected {CTL_HELP}")
    verb = words[0]
    return pattern, verb, words[1] if len(words) > 1 else None


def cmd_ctl(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `make ctl status | head` ends quietly
    pattern, verb, service = parse_ctl(args.words)
    env: dict[str, str] = {}
    for item in args.set or []:
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise StackError(f"--set {item!r}: expected VAR=value")
        env[var] = value
    stacks = running_stacks(runs_root())
    if pattern is not None:
        name = load_topology(find_pattern(pattern)).name
        stacks = [s for s in stacks if s["pattern"] == name]
    if not stacks:
        which = f" of {pattern}" if pattern else ""
        print(f"no running stack{which}; start one with `make run PATTERN=...`", file=sys.stderr)
        return 2
    if len(stacks) > 1 and pattern is None:
        names = ", ".join(s["pattern"] for s in stacks)
        print(f"several stacks are running ({names}): name one, e.g. "
              f"`make ctl PATTERN={stacks[0]['folder']} {verb} ...`", file=sys.stderr)
        return 2
    reply = send(stacks[0], {"verb": verb, "service": service, "env": env}, args.timeout)
    if reply.get("ok"):
        if reply.get("message"):
            print(reply["message"])
    else:
        print(f"error: {reply.get('error')}", file=sys.stderr)
    if reply.get("status"):
        rows = [{"service": s["name"], "state": s["state"], "pid": s["pid"] or "-",
                 "url": s["url"] or "-", "restart": s["restart"], "restarts": s["restarts"],
                 "last exit": describe_exit(s["exit_code"]) or "-"} for s in reply["status"]]
        print(format_table(rows))
    return 0 if reply.get("ok") else 1


def load_scenario(folder: Path, spec: str | None) -> Callable[[Stack], list[dict[str, Any]]]:
    module_name, _, func = (spec or "").partition(":")
    if not module_name:
        rel = folder.relative_to(repo_root())
        module_name, func = ".".join((*rel.parts, "scenario")), "run"
    module = importlib.import_module(module_name)
    scenario: Callable[[Stack], list[dict[str, Any]]] = getattr(module, func)
    return scenario


def shown(path: Path) -> str:
    """A path as a user can paste it: relative to the working directory when inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def keep_pictures(run_dir: Path, folder: Path, save: bool) -> str:
    """Name the PNGs a scenario drew into its run directory (the summary's `picture`); with
    `save`, copy each into the pattern folder, the copy its README links."""
    drawn = sorted(run_dir.glob("*.png"))
    for png in drawn:
        print(f"picture: {shown(png)}", flush=True)
        if save:
            shutil.copyfile(png, folder / png.name)
            print(f"  saved as {shown(folder / png.name)}", flush=True)
    return ", ".join(shown(png) for png in drawn) or "-"


def demo_one(
    folder: Path, env: dict[str, dict[str, str]] | None = None, step: str = "",
    save_pictures: bool = False,
) -> dict[str, Any]:
    """Boot, run the scenario, print its observations and pictures; the tour's summary row."""
    topology = load_topology(folder)
    print(f"\n== {step}{topology.id} {topology.title}: {topology.summary}", flush=True)
    row: dict[str, Any] = {"pattern": f"{topology.id} {topology.title}", "boot": "-",
                           "result": "fail", "what it proves": topology.proves or topology.summary,
                           "picture": "-"}
    started = time.perf_counter()
    try:
        scenario = load_scenario(folder, topology.scenario)
        stack = Stack(folder, run_dir_for(topology.name), env=env)
        stack.on_event = lambda line: print(f"  {line}", flush=True)
        with stack:
            took = time.perf_counter() - started
            row["boot"] = f"{took:.1f}s"
            print(f"booted in {took:.1f}s; running the scenario", flush=True)
            stack.on_event = None  # the scenario's own kills and restarts are its story
            observed = scenario(stack)
    except Exception as exc:  # a tour goes on past a broken pattern, and says which broke
        print(f"demo of {topology.name} failed: {type(exc).__name__}: {exc}", flush=True)
        return row
    print(format_table(observed), flush=True)
    row["result"] = "pass"
    row["picture"] = keep_pictures(stack.run_dir, folder, save_pictures)
    return row


def cmd_demo(args: argparse.Namespace) -> int:
    root = repo_root()
    folders = [find_pattern(args.pattern)] if args.pattern else sorted(
        discover(root), key=lambda folder: position(folder, root)
    )
    env = parse_sets(args.set)
    began = time.perf_counter()
    rows = [demo_one(folder, env, f"[{i}/{len(folders)}] ", args.save_pictures)
            for i, folder in enumerate(folders, 1)]
    passed = sum(row["result"] == "pass" for row in rows)
    took = time.perf_counter() - began
    print(f"\n== summary: {passed} of {len(rows)} passed in {took:.0f}s", flush=True)
    print(format_table(rows), flush=True)
    return 0 if passed == len(rows) else 1


def rendered_files(root: Path) -> list[tuple[Path, str]]:
    """Every generated file with its expected text: compose and k8s files, the README table."""
    files = []
    for folder in discover(root):
        topology = load_topology(folder)
        files.append(render_file(topology, folder, root))
        files.append(render_k8s_file(topology, folder, root))
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
    ctl = sub.add_parser(
        "ctl", help="control the stack `run` booted, from another terminal",
        description=f"python -m patternkit ctl [PATTERN] {CTL_HELP}",
    )
    ctl.add_argument("words", nargs="+", metavar="[PATTERN] COMMAND [SERVICE]")
    ctl.add_argument("--set", action="append", metavar="VAR=VALUE",
                     help="a setting for start/restart (repeatable)")
    ctl.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a reply")
    ctl.set_defaults(func=cmd_ctl)
    demo = sub.add_parser("demo", help="boot, run the scenario, print observations, tear down")
    demo.add_argument("pattern", nargs="?", help="one pattern (default: every built pattern)")
    demo.add_argument("--set", action="append", metavar="SERVICE.VAR=VALUE", help=set_help)
    demo.add_argument("--save-pictures", action="store_true",
                      help="also copy the scenario's PNGs into the pattern folder (the copies "
                           "its README links)")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("render", help="write docker-compose.yml and k8s.yaml files").set_defaults(
        func=cmd_render
    )
    sub.add_parser("check", help="validate topologies and rendered files").set_defaults(
        func=cmd_check
    )
    args = parser.parse_args(argv)
    configure_logs("patternkit")
    try:
        code: int = args.func(args)
    except (TopologyError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
