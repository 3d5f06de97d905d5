"""Every README's commands name real things: make targets and variables, pattern folders,
modules, `make ctl` verbs and services, repo paths and the entry's HTTP routes.

Every README.md of the repository (found by glob, so a new pattern is covered at once) and
the pages under docs/ are read; the commands are those of their shell code blocks and the
inline `make ...`, `python -m ...` and `curl ...` spans. The checker is a function of the
text, so a unit test below proves it fails on wrong names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from patternkit.topology import Stack, discover, load_topology, repo_root
from patternkit.topology.control import NEEDS_SERVICE, VERBS

ROOT = repo_root()
SHELL_LANGS = frozenset({"sh", "bash", "shell", "console", "zsh"})
ENTRY_PORT = "8000"  # where every README's `make run` puts the entry (Makefile PORT ?= 8000)
KEYWORDS = frozenset({"do", "then", "else", "elif", "time", "!", "{", "}"})
LOOPS = frozenset({"for", "while", "until", "if", "done", "fi", "case", "esac"})
URL = re.compile(r"^(?:https?://)?(localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)(/[^\s?#]*)?")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*>")  # `<run dir>`, `<job_id>`: one word, unchecked


def readmes() -> list[Path]:
    found = [p for p in ROOT.glob("**/README.md")
             if not any(part.startswith(".") or part == "node_modules"
                        for part in p.relative_to(ROOT).parts)]
    return sorted(found) + sorted((ROOT / "docs").glob("*.md"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- what is real ---------------------------------------------------------------------------


@functools.cache
def makefile() -> tuple[frozenset[str], str]:
    """(the Makefile's targets, its text)."""
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for line in text.splitlines():
        found = re.match(r"^([A-Za-z0-9_-][A-Za-z0-9_. -]*):(?!=)", line)
        if found:
            targets.update(found.group(1).split())
    return frozenset(targets), text


@functools.cache
def patterns() -> dict[str, Path]:
    return {rel(folder): folder for folder in discover(ROOT)}


@functools.cache
def services(folder: Path) -> frozenset[str]:
    """Services, their instances (`predictor-1`) and backing services of a pattern."""
    topology = load_topology(folder)
    names = set(topology.backing)
    for name, spec in topology.services.items():
        names.update([name, *spec.instances(name)])
    return frozenset(names)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def route_paths(routes: list[object]) -> set[str]:
    paths: set[str] = set()
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            paths.add(path)
        paths |= route_paths(list(getattr(route, "routes", None) or []))
    return paths


@functools.cache
def entry_routes(folder: Path) -> tuple[re.Pattern[str], ...] | None:
    """The routes of a pattern's entry service, as regexes: its app is built (not started)
    with the environment the runner would give it. None for an entry that is a command
    (O1's server runs from an unpacked bundle): its routes cannot be known without running it."""
    topology = load_topology(folder)
    spec = topology.services[topology.entry]
    if not spec.app:
        return None
    with tempfile.TemporaryDirectory() as run_dir:
        env = Stack(topology, run_dir).proc(spec.instances(topology.entry)[0]).env
    module, factory = spec.app.split(":")
    with environment(env):
        app = getattr(importlib.import_module(module), factory)()
        paths = route_paths(app.routes) | set(app.openapi()["paths"])
    regexes = []
    for path in paths:
        pattern = re.sub(r"\\\{\w+:path\\\}", ".+", re.escape(path))
        regexes.append(re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", pattern) + "/?"))
    return tuple(regexes)


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# -- reading commands -----------------------------------------------------------------------


@dataclass
class Line:
    text: str
    number: int
    shell: bool  # from a shell code block (False: an inline span in the prose)


def code_blocks(text: str) -> Iterator[tuple[str, int, str]]:
    """(language, line number of the first line, body) of each fenced block."""
    for found in re.finditer(r"^( *)```(\S*)[^\n]*\n(.*?)^ *```", text, flags=re.S | re.M):
        yield found.group(2), text[: found.start(3)].count("\n") + 1, found.group(3)


def command_lines(text: str) -> tuple[list[Line], list[Line]]:
    """(logical lines of the shell blocks, block by block with None between, inline spans)."""
    blocks: list[Line] = []
    for lang, first, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        pending, start = "", first
        for offset, raw in enumerate(body.splitlines()):
            if not pending:
                start = first + offset
            line = raw.strip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            blocks.append(Line(pending + line, start, True))
            pending = ""
        blocks.append(Line("", first, True))  # the end of a block
    prose = re.sub(r"^ *```.*?^ *```", lambda m: "\n" * m.group(0).count("\n"), text,
                   flags=re.S | re.M)
    spans = []
    for found in re.finditer(r"`([^`\n]+)`", prose):
        span = found.group(1)
        if re.match(r"(make( |$)|\.venv/bin/python |python3? -m |curl )", span):
            spans.append(Line(span, prose[: found.start()].count("\n") + 1, False))
    return blocks, spans


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at ; & && | ||), comments dropped."""
    words = PLACEHOLDER.sub(lambda m: m.group(0).replace(" ", "_"), line)
    lexer = shlex.shlex(words, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unclosed quote
        return [[f"<unparsable: {exc}>"]]
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def assignment(token: str) -> tuple[str, str] | None:
    found = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", token, flags=re.S)
    return (found.group(1), found.group(2)) if found else None


def unchecked(word: str) -> bool:
    """A placeholder the README means the reader to fill in."""
    return (not word or "$" in word or "<" in word or ">" in word or "..." in word
            or "*" in word or re.fullmatch(r"[A-Z]", word) is not None)


# -- checking -------------------------------------------------------------------------------


@dataclass
class Checker:
    """Checks the commands of one markdown text; `pattern` is the folder the README is in."""

    source: str
    pattern: Path | None = None
    problems: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    current: Path | None = None  # the pattern a block's later commands talk to

    def problem(self, line: Line, message: str) -> None:
        self.problems.append(f"{self.source}:{line.number}: `{line.text}`: {message}")

    def check(self, text: str) -> list[str]:
        blocks, spans = command_lines(text)
        self.current = self.pattern
        for line in blocks:
            if not line.text:  # a block ended
                self.current, self.variables = self.pattern, {}
                continue
            for words in simple_commands(line.text):
                self.command(line, words)
        for line in spans:
            self.current, self.variables = self.pattern, {}
            for words in simple_commands(line.text):
                self.command(line, words)
        return self.problems

    def command(self, line: Line, words: list[str]) -> None:
        while words and words[0] in KEYWORDS:
            words = words[1:]
        if not words or words[0] in LOOPS:
            return
        env = []
        while words and (pair := assignment(words[0])):
            env.append(pair)
            words = words[1:]
        if not words:  # VAR=value ...: remembered for `$VAR` later in the block
            self.variables.update(env)
            for _, value in env:
                self.paths(line, shlex.split(value) if " " in value else [value])
            return
        if words[0].startswith("$") and words[0][1:] in self.variables:
            words = shlex.split(self.variables[words[0][1:]]) + words[1:]
        self.paths(line, words + [value for _, value in env])
        program = words[0]
        if program == "make":
            self.make(line, words[1:])
        elif program in ("python", "python3") and line.shell:
            self.problem(line, "run Python as .venv/bin/python: the project's packages are "
                               "in the virtualenv, not on the system Python")
        if Path(program).name in ("python", "python3") and "-m" in words:
            module = words[words.index("-m") + 1] if words[-1] != "-m" else ""
            if not importable(module):
                self.problem(line, f"python -m {module}: no such module")
        if "curl" in words:
            self.curl(line, words[words.index("curl") + 1:])

    def paths(self, line: Line, words: list[str]) -> None:
        """A word that starts with a top-level entry of the repository is a path that must
        exist (`.runs/` is made at run time)."""
        top = {p.name for p in ROOT.iterdir()} - {".runs", ".git"}
        for word in words:
            word = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
            first = word.split("/", 1)[0]
            if "/" not in word or "://" in word or unchecked(word) or first not in top:
                continue
            path = ROOT / word
            if not path.exists():
                self.problem(line, f"{word}: no such file or folder in the repository")
                continue
            folder = next((p for p in (path, *path.parents) if (p / "topology.toml").is_file()),
                          None)
            if folder is not None and folder != ROOT and line.shell:
                self.current = folder

    def make(self, line: Line, words: list[str]) -> None:
        targets, text = makefile()
        settings = dict(pair for w in words if (pair := assignment(w)))
        goals = [w for w in words if not assignment(w)]
        for name in settings:
            if not re.search(rf"\$\({name}\)", text):
                self.problem(line, f"{name}=...: the Makefile does not use {name}")
        folder = self.current
        chosen = settings.get("PATTERN")
        if chosen is not None and not unchecked(chosen):
            folder = patterns().get(chosen.rstrip("/"))
            if folder is None:
                self.problem(line, f"PATTERN={chosen}: no pattern folder with a topology.toml")
                return
            if line.shell:
                self.current = folder
        first = goals[0] if goals else ""
        if first and first not in targets:
            self.problem(line, f"make {first}: no such target in the Makefile")
            return
        if first == "ctl":
            self.ctl(line, goals[1:], folder, settings.get("SET"))
            return
        bad = [g for g in goals[1:] if g not in targets]
        if bad:
            self.problem(line, f"make {' '.join(bad)}: no such target in the Makefile")
        if first == "run" and chosen is None and line.shell:
            self.current = patterns().get(default_pattern())
        if first in ("run", "demo") and settings.get("SET"):
            for item in settings["SET"].split():
                service = item.split("=", 1)[0].rpartition(".")[0]
                if not service:
                    self.problem(line, f"SET item {item!r}: run and demo take service.VAR=value")
                elif folder is not None and chosen is not None and not unchecked(service) \
                        and service not in services(folder):
                    self.problem(line, f"SET item {item!r}: no service {service!r} in "
                                       f"{rel(folder)}")

    def ctl(self, line: Line, words: list[str], folder: Path | None, sets: str | None) -> None:
        known = services(folder) if folder else frozenset().union(
            *(services(f) for f in patterns().values()))
        where = rel(folder) if folder else "any pattern"
        i = 0
        while i < len(words):
            verb = words[i]
            if verb not in VERBS:
                self.problem(line, f"make ctl {verb}: not a ctl verb ({', '.join(VERBS)})")
                return
            if verb in NEEDS_SERVICE:
                service = words[i + 1] if i + 1 < len(words) else ""
                if not service:
                    self.problem(line, f"make ctl {verb}: names no service")
                elif not unchecked(service) and service not in known:
                    self.problem(line, f"make ctl {verb} {service}: no such service in {where}")
                i += 1
            i += 1
        for item in (sets or "").split():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", item):
                self.problem(line, f"SET item {item!r}: ctl takes VAR=value (no service.)")

    def curl(self, line: Line, words: list[str]) -> None:
        for word in words:
            word = PLACEHOLDER.sub("x", word)  # /result/<job_id>: any one path segment
            found = URL.match(word)
            if not found or found.group(2) != ENTRY_PORT or unchecked(word):
                continue
            if self.current is None:
                continue  # no pattern in sight: a generic example
            path = found.group(3) or "/"
            routes = entry_routes(self.current)
            if routes is not None and not any(r.fullmatch(path) for r in routes):
                entry = load_topology(self.current).entry
                self.problem(line, f"{path}: not a route of {rel(self.current)}'s entry "
                                   f"({entry})")


def default_pattern() -> str:
    found = re.search(r"^DEFAULT_PATTERN := (.+)$", makefile()[1], flags=re.M)
    assert found, "no DEFAULT_PATTERN in the Makefile"
    return found.group(1).strip()


def pattern_of(readme: Path) -> Path | None:
    return readme.parent if (readme.parent / "topology.toml").is_file() else None


def check_readme(readme: Path) -> list[str]:
    return Checker(rel(readme), pattern_of(readme)).check(readme.read_text())


# -- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def importable_from_the_root() -> Iterator[None]:
    sys.path.insert(0, str(ROOT))
    yield
    sys.path.remove(str(ROOT))


def test_every_pattern_and_the_docs_are_covered() -> None:
    found = {rel(p) for p in readmes()}
    assert "README.md" in found
    assert {"docs/architecture.md", "docs/deploy.md"} <= found
    assert {f"{p}/README.md" for p in patterns()} <= found


@pytest.mark.parametrize("readme", readmes(), ids=rel)
def test_readme_commands_name_real_things(readme: Path) -> None:
    problems = check_readme(readme)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("readme", readmes(), ids=rel)
def test_every_code_block_names_its_language(readme: Path) -> None:
    """A fence without a language would be a shell block this test cannot see."""
    bare = [line for lang, line, _ in code_blocks(readme.read_text()) if not lang]
    assert not bare, f"{rel(readme)}: code blocks without a language at lines {bare}"


@pytest.mark.parametrize("folder", list(patterns().values()), ids=rel)
def test_run_it_runs_this_pattern(folder: Path) -> None:
    """The Run it section boots, demos and tests its own folder (not a copied one)."""
    text = (folder / "README.md").read_text()
    section = text.split("## Run it", 1)[1].split("\n## ", 1)[0]
    here = rel(folder)
    for goal in ("run", "demo", "test"):
        assert f"make {goal} PATTERN={here}" in section, f"no `make {goal} PATTERN={here}`"
    named = set(re.findall(r"PATTERN=(\S+)", section))
    assert named == {here}, named


BAD_README = """\
# S8 Prediction cache

## Run it

```sh
make run PATTERN=serving_patterns/prediction_cache
make serve PATTERN=serving_patterns/prediction_cache          # no such target
make demo PATTERN=serving_patterns/no_such_pattern
make test PATERN=serving_patterns/prediction_cache            # a misspelt variable
python -m patternkit.trainer --out /tmp/x                     # not the venv's python
.venv/bin/python -m patternkit.no_such_module
make ctl explode proxy
make ctl kill worker                                          # S8 has no worker
make ctl restart proxy SET="proxy.CACHE_TTL_S=1"              # ctl takes VAR=value
cat serving_patterns/prediction_cache/NO_SUCH_FILE.md
curl -s localhost:8000/predictions
curl -s localhost:8000/predict/<job_id>                        # a path S8 does not have
```

Inline too: `make ctl stop nobody` and `curl -s localhost:8000/nothing`.
"""

GOOD_README = """\
```sh
make run PATTERN=serving_patterns/prediction_cache    # http://127.0.0.1:8000
curl -si -X POST localhost:8000/predict -H 'content-type: application/json' \\
     -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
curl -s localhost:8000/stats
curl -s localhost:8000/docs/assets/<file>
D=.runs/prediction_cache-<time>; EDGE=".venv/bin/python -m patternkit.trainer"
$EDGE --out $D/models/x && ls serving_patterns/prediction_cache/topology.toml
make ctl restart predictor SET="DELAY_MS=800"       # a comment with make nothing
make ctl pause redis && make ctl resume redis
make run SET="predictor.DELAY_MS=800 proxy.CACHE_TTL_S=1" PATTERN=serving_patterns/prediction_cache
```

`make ctl status`, `make list`, `.venv/bin/python -m patternkit check`.
"""


def test_the_checker_finds_every_wrong_name() -> None:
    folder = ROOT / "serving_patterns" / "prediction_cache"
    problems = Checker("BAD.md", folder).check(BAD_README)
    expected = [
        (7, "make serve: no such target"),
        (8, "PATTERN=serving_patterns/no_such_pattern: no pattern folder"),
        (9, "PATERN=...: the Makefile does not use PATERN"),
        (10, "run Python as .venv/bin/python"),
        (11, "python -m patternkit.no_such_module: no such module"),
        (12, "make ctl explode: not a ctl verb"),
        (13, "make ctl kill worker: no such service in serving_patterns/prediction_cache"),
        (14, "SET item 'proxy.CACHE_TTL_S=1': ctl takes VAR=value"),
        (15, "serving_patterns/prediction_cache/NO_SUCH_FILE.md: no such file"),
        (16, "/predictions: not a route of serving_patterns/prediction_cache's entry (proxy)"),
        (17, "/predict/x: not a route"),
        (20, "make ctl stop nobody: no such service"),
        (20, "/nothing: not a route"),
    ]
    for number, message in expected:
        assert any(p.startswith(f"BAD.md:{number}:") and message in p for p in problems), (
            number, message, problems)
    assert len(problems) == len(expected), problems


def test_the_checker_passes_commands_that_are_right() -> None:
    folder = ROOT / "serving_patterns" / "prediction_cache"
    assert Checker("GOOD.md", folder).check(GOOD_README) == []


def test_a_curl_is_checked_against_the_pattern_the_block_boots() -> None:
    """Outside a pattern folder (the root README, docs/), a block's `make run PATTERN=...`
    or a path into a pattern folder says whose routes a later curl must name."""
    text = ("```sh\nkubectl apply -f serving_patterns/asynchronous/k8s.yaml\n"
            "curl -s localhost:8000/result/abc\ncurl -s localhost:8000/breaker\n```\n")
    problems = Checker("docs.md").check(text)
    assert len(problems) == 1 and "/breaker: not a route of serving_patterns/asynchronous" in (
        problems[0]), problems
