"""Catalogue checks: every pattern folder is complete and its deploy files are valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from patternkit.catalogue import CATALOGUE, role_of
from patternkit.topology import discover, load_topology, render_file, render_k8s_file, repo_root
from patternkit.topology.k8s import K8S_VERSION

ROOT = repo_root()
PATTERNS = discover(ROOT)
README_SECTIONS = ["Usecase", "Architecture", "Run it", "What you will see", "Pros", "Cons",
                   "Needs consideration"]


def rel(folder: Path) -> str:
    return folder.relative_to(ROOT).as_posix()


def test_every_pattern_folder_is_a_catalogue_entry_with_a_topology() -> None:
    """No half-built folder: a package under a category folder is a pattern with a topology,
    and it is one the catalogue lists."""
    from patternkit.topology import CATEGORY_DIRS

    packages = {rel(p.parent) for c in CATEGORY_DIRS for p in (ROOT / c).glob("*/__init__.py")}
    assert packages == {rel(p) for p in PATTERNS}
    assert {rel(p) for p in PATTERNS} <= {f for _, f, _ in CATALOGUE}


def started_modules(folder: Path) -> list[str]:
    """The Python modules a pattern's topology starts (apps, `python -m X`, `celery -A X`)."""
    found = []
    for spec in load_topology(folder).services.values():
        if spec.app:
            found.append(spec.app.split(":")[0])
        run = spec.run or []
        found += [run[i + 1] for i, arg in enumerate(run[:-1]) if arg in ("-m", "-A")]
        worker = getattr(spec, "worker", None)
        if worker:
            found.append(worker)
    return [m for m in found if m != "celery"]


@pytest.mark.parametrize("folder", PATTERNS, ids=rel)
def test_process_modules_are_named_after_their_roles(folder: Path) -> None:
    modules = started_modules(folder)
    assert modules, "the topology starts no module of ours"
    unnamed = [m for m in modules if role_of(m) is None]
    assert not unnamed, f"not a role name (see patternkit.catalogue.ROLES): {unnamed}"


@pytest.mark.parametrize("folder", PATTERNS, ids=rel)
def test_pattern_folder_is_complete(folder: Path) -> None:
    topology = load_topology(folder)
    known = {f: pid for pid, f, _ in CATALOGUE}
    assert known.get(rel(folder)) == topology.id, "folder and id must match the catalogue"
    assert topology.name == folder.name
    assert (folder / "__init__.py").is_file()
    assert (folder / "scenario.py").is_file()
    assert list(folder.glob("tests/test_*.py")), "integration tests are missing"
    readme = (folder / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert headings == README_SECTIONS
    assert "```mermaid" in readme


@pytest.mark.parametrize("folder", PATTERNS, ids=rel)
def test_rendered_compose_is_up_to_date(folder: Path) -> None:
    target, text = render_file(load_topology(folder), folder, ROOT)
    assert target.is_file(), f"run `make render` to write {rel(target)}"
    assert target.read_text() == text, f"{rel(target)} drifted; run `make render`"


@pytest.mark.parametrize("folder", PATTERNS, ids=rel)
def test_rendered_k8s_is_up_to_date(folder: Path) -> None:
    target, text = render_k8s_file(load_topology(folder), folder, ROOT)
    assert target.is_file(), f"run `make render` to write {rel(target)}"
    assert target.read_text() == text, f"{rel(target)} drifted; run `make render`"


def test_k8s_manifests_validate_strictly() -> None:
    """Every object against the Kubernetes API schema of K8S_VERSION, unknown fields refused."""
    files = [str(f / "k8s.yaml") for f in PATTERNS]
    exe = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(exe), "--strict", "--quiet", "-k", K8S_VERSION, *files],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return [spec["template"]["spec"]] if "template" in spec else []


URL_HOST = re.compile(r"(?:https?|redis|postgresql)://(?:[^@/\s]*@)?([a-z0-9.-]+):(\d+)")
TCP_ADDRESS = re.compile(r"([a-z0-9.-]+):(\d+)")  # a gate's --tcp HOST:PORT


def addresses(texts: list[str]) -> list[tuple[str, str]]:
    found = [hp for text in texts for hp in URL_HOST.findall(text)]
    return found + [m.groups() for t in texts if (m := TCP_ADDRESS.fullmatch(t))]


def unresolved(box: dict[str, Any]) -> list[str]:
    """Placeholders left, and `$(VAR)` references to variables the container lacks (in env,
    only those defined above: kubelet expands in order)."""
    problems: list[str] = []
    defined: list[str] = []
    for item in box.get("env", []):
        problems += [f"{item['name']} uses $({v}) before it is defined"
                     for v in re.findall(r"\$\((\w+)\)", item.get("value", ""))
                     if v not in defined]
        defined.append(item["name"])
    for text in [*box.get("command", []), *box.get("args", []),
                 *(e.get("value", "") for e in box.get("env", []))]:
        problems += [f"placeholder left in {text!r}"] if re.search(r"\{[\w.]+\}", text) else []
        problems += [f"$({v}) is not defined" for v in re.findall(r"\$\((\w+)\)", text)
                     if v not in defined]
    return problems


@pytest.mark.parametrize("folder", PATTERNS, ids=rel)
def test_k8s_env_is_resolved_and_names_existing_services(folder: Path) -> None:
    """No `{placeholder}` is left, every `$(VAR)` is a variable the container defines, and
    every address in an env value or a start-up gate is a Service of the file, on its port
    (`name-0.name`: a member of the StatefulSet `name` behind that headless Service)."""
    docs = list(yaml.safe_load_all((folder / "k8s.yaml").read_text()))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    members = {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs
               if d["kind"] == "StatefulSet"}
    checked = 0
    for doc in docs:
        for pod in pod_templates(doc):
            for box in pod.get("initContainers", []) + pod["containers"]:
                assert not unresolved(box), f"{box['name']}: {unresolved(box)}"
                texts = [*box.get("command", []),
                         *(e.get("value", "") for e in box.get("env", []))]
                for host, port in addresses(texts):
                    member, _, svc = host.partition(".")
                    if svc:
                        base, _, index = member.rpartition("-")
                        assert base == svc and int(index) < members.get(svc, 0), host
                    else:
                        svc = member
                    assert svc in services, f"{box['name']} names {host}: no such Service"
                    ports = {p["port"] for p in services[svc]["spec"]["ports"]}
                    assert int(port) in ports, f"{host}:{port} is not a port of {svc}"
                    checked += 1
    wired = [s for s in load_topology(folder).rendered().values() if s.image is None
             and any("." in f for v in s.env.values() for f in re.findall(r"\{([\w.]+)\}", v))]
    assert checked or not wired, "no address was checked"


def test_compose_files_follow_the_compose_spec() -> None:
    files = [str(ROOT / "docker-compose.yml"), *(str(f / "docker-compose.yml") for f in PATTERNS)]
    exe = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", *files],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


COMPOSE_FILES = [ROOT / "docker-compose.yml", *(f / "docker-compose.yml" for f in PATTERNS)]


def seconds(duration: str) -> float:
    """A compose duration (`25s`, `1m30s`, `500ms`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(path.read_text())["services"]
    return services


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: rel(p))
def test_compose_publishes_only_the_entry_on_a_port_variable(path: Path) -> None:
    """Two patterns run at once with PORT=8001; Redis and PostgreSQL stay inside the
    pattern's network (the root file publishes nothing)."""
    published = {name: svc["ports"] for name, svc in compose_services(path).items()
                 if "ports" in svc}
    if path.parent == ROOT:
        assert published == {}
        return
    entry = load_topology(path.parent).entry
    assert list(published.values()) == [["${PORT:-8000}:8000"]], published
    assert next(iter(published)).removesuffix("-1") == entry


def option_names(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg.startswith("--")]


DOCKERFILE_DRAIN_S = 20  # --timeout-graceful-shutdown of the model-in-image stage's CMD


@pytest.mark.parametrize("path", COMPOSE_FILES[1:], ids=lambda p: rel(p))
def test_compose_servers_drain_like_the_runner_and_stop_after_the_drain(path: Path) -> None:
    """Every app runs with the options the local runner gives `patternkit.serve` (the
    graceful-shutdown timeout among them), and compose's SIGKILL waits past that drain; a
    long-running worker gets time for its warm shutdown."""
    from patternkit.topology import Stack

    topology = load_topology(path.parent)
    runner = Stack(topology, "/tmp/unused")
    checked = 0
    for name, svc in compose_services(path).items():
        spec = runner.procs[name].spec if name in runner.procs else None
        if spec is None:
            continue  # a backing service
        if spec.app:
            assert option_names(svc["command"]) == option_names(runner.proc(name).argv)
            drain = float(svc["command"][svc["command"].index("--timeout-graceful-shutdown") + 1])
            assert seconds(svc["stop_grace_period"]) > drain, name
            checked += 1
        elif spec.image is not None:  # its own image: the Dockerfile's CMD drains (O1)
            assert "command" not in svc, name
            assert seconds(svc["stop_grace_period"]) > DOCKERFILE_DRAIN_S, name
            checked += 1
        elif not spec.oneshot:
            assert seconds(svc["stop_grace_period"]) >= 60, name
    assert checked, "no app service"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: rel(p))
def test_compose_healthchecks_leave_time_for_a_busy_start(path: Path) -> None:
    """On 2 shared cores a service may take tens of seconds to import and load its model:
    a minute of start period, probed every second so a dependent starts at once, and a
    timeout above the probe's own 2 s HTTP timeout."""
    for name, svc in compose_services(path).items():
        check = svc.get("healthcheck")
        if check is None:
            continue
        assert seconds(check["start_period"]) >= 60, name
        assert seconds(check["start_interval"]) <= 2, name
        assert seconds(check["timeout"]) > 2, name
        assert check["retries"] * seconds(check["interval"]) >= 20, name


def makefile_value(name: str) -> str:
    found = re.search(rf"^{name} := (.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert found, f"no {name} in the Makefile"
    return found.group(1).strip()


def test_the_image_vendors_onnxruntime_web_as_make_vendor_does() -> None:
    """S13's page needs onnxruntime-web in the image: the Dockerfile's npm stage fetches the
    Makefile's version and files into the folder the page serves, and .dockerignore keeps a
    host copy out of the build."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = makefile_value("ORT_WEB_VERSION")
    assert re.search(r"^FROM node:\S+ AS onnxruntime-web$", dockerfile, flags=re.M)
    assert f"ARG ORT_WEB_VERSION={version}\n" in dockerfile
    assert 'npm pack --quiet "onnxruntime-web@${ORT_WEB_VERSION}"' in dockerfile
    extracted = re.findall(r"package/dist/(\S+)", dockerfile)
    assert sorted(set(extracted) - {"*"}) == sorted(makefile_value("ORT_WEB_FILES").split())
    target = makefile_value("ORT_WEB_DIR")
    assert f"COPY --from=onnxruntime-web /ort/vendor {target}\n" in dockerfile
    assert "**/static/vendor" in (ROOT / ".dockerignore").read_text().split()
    stages = re.findall(r"^FROM (.+)$", dockerfile, flags=re.M)
    assert stages[0] == "node:20-slim AS onnxruntime-web", "the npm stage comes first"
    assert stages[1] == "python:3.11-slim AS project", "then the one image of every service"
    assert stages[-1] == "project", "which is the default target (O1's stages sit between)"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no command block"
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


SQL_PATTERNS = [f for f in PATTERNS
                if any(b.kind == "sql" for b in load_topology(f).backing.values())]


def test_patterns_that_keep_tables_declare_a_sql_backing() -> None:
    uses_sql = {f for f in PATTERNS
                if any("sqlalchemy" in p.read_text() for p in f.glob("*.py"))}
    assert uses_sql == set(SQL_PATTERNS), "a pattern with tables declares kind = \"sql\""


@pytest.mark.parametrize("folder", SQL_PATTERNS, ids=rel)
def test_table_names_carry_the_pattern_name(folder: Path) -> None:
    """Patterns share one PostgreSQL database under DATABASE_URL: their tables must not clash."""
    import importlib

    import sqlalchemy as sa

    name = load_topology(folder).name
    package = ".".join(folder.relative_to(ROOT).parts)
    tables: set[str] = set()
    for module_file in sorted(folder.glob("*.py")):
        module = importlib.import_module(f"{package}.{module_file.stem}")
        for value in vars(module).values():
            if isinstance(value, sa.MetaData):
                tables.update(value.tables)
    assert tables, f"no table found in {rel(folder)}"
    assert all(t.startswith(f"{name}_") for t in tables), sorted(tables)
