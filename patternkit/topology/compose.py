"""The compose renderer: the same topology as a `docker-compose.yml`, committed per pattern.

Every Python service runs the one project image with a different command; app services
listen on 8000 inside their container, drain in-flight requests for DRAIN_S on SIGTERM (the
runner passes the same flag) and get a healthcheck from `ready`; only the entry is published,
on `${PORT:-8000}`, so two patterns can run at once. `depends_on` uses `service_healthy` /
`service_completed_successfully`; backing services are images (Redis, and PostgreSQL for a
`sql` one, its URL by service name), reached inside the pattern's network only. A service with
`image` is built from its own stage of the root Dockerfile and runs that image's command;
`local` services are left out. The file is generated, never edited by hand:
`python -m patternkit check` fails when it drifts.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from patternkit.topology.schema import ServiceSpec, Topology

IMAGE = "ml-system-patterns:latest"
APP_PORT = 8000
DATA_DIR = "/data"
# pinned to a minor version, as the project image is (python:3.11-slim)
BACKING_IMAGES = {"redis": "redis:7.4-alpine", "sql": "postgres:16.6-alpine"}
PG_USER, PG_PASSWORD, PG_DB = "postgres", "patterns", "patterns"  # as the root compose file
PORT_VAR = "PORT"  # the entry's host port, as `make run PORT=...`
DRAIN_S = 20  # uvicorn --timeout-graceful-shutdown: in-flight requests finish
APP_STOP_S = DRAIN_S + 5  # compose's SIGKILL comes after the drain, never during it
WORKER_STOP_S = 60  # a Celery worker's warm shutdown finishes its current task
# Healthchecks on 2 busy cores: a probe every second while a service starts (start_interval,
# Docker Engine 25+), up to START_PERIOD for imports and a model load, then every 10 s (a
# probe is a short Python process); unhealthy after 3 failures in a row once started.
HEALTHCHECK = {"interval": "10s", "timeout": "5s", "retries": 3, "start_period": "60s",
               "start_interval": "1s"}
HEADER = (
    "# Rendered from topology.toml by `python -m patternkit render`; do not edit by hand.\n"
    "# Run from the repository root: docker compose -f {path} up --build\n"
    "# The entry is published on ${{PORT:-8000}}: PORT=8001 docker compose ... runs a second one.\n"
)


def _http_probe(path: str) -> list[str]:
    return ["CMD", "python", "-m", "patternkit.probe", f"http://127.0.0.1:{APP_PORT}{path}"]


def _healthcheck(test: list[str]) -> dict[str, Any]:
    return {"test": test, **HEALTHCHECK}


def serve_command(app: str) -> list[str]:
    """How an app service starts in a container (compose and Kubernetes alike)."""
    return ["python", "-m", "patternkit.serve", app, "--host", "0.0.0.0", "--port",
            str(APP_PORT), "--timeout-graceful-shutdown", str(DRAIN_S)]


def _backing_url(name: str, kind: str) -> tuple[str, int]:
    """(URL, port) of a backing service, by its service (DNS) name."""
    if kind == "sql":
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@{name}:5432/{PG_DB}", 5432
    return f"redis://{name}:6379/0", 6379


def _backing_service(kind: str) -> dict[str, Any]:
    if kind == "sql":
        return {
            "image": BACKING_IMAGES[kind],
            "environment": {"POSTGRES_USER": PG_USER, "POSTGRES_PASSWORD": PG_PASSWORD,
                            "POSTGRES_DB": PG_DB},
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-U", PG_USER, "-d", PG_DB]),
        }
    return {
        "image": BACKING_IMAGES[kind],
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "healthcheck": _healthcheck(["CMD", "redis-cli", "ping"]),
    }


def _context(topology: Topology, instance: str) -> dict[str, Any]:
    ctx: dict[str, Any] = {"port": APP_PORT, "run_dir": DATA_DIR, "python": "python",
                           "name": instance}
    for name, backing in topology.backing.items():
        url, port = _backing_url(name, backing.kind)
        ctx[name] = SimpleNamespace(url=url, urls=url, host=name, port=port)
    for name, spec in topology.services.items():
        urls = [f"http://{i}:{APP_PORT}" for i in spec.instances(name)]
        ctx[name] = SimpleNamespace(url=urls[0], urls=",".join(urls), host=spec.instances(name)[0],
                                    port=APP_PORT)
    return ctx


def _depends(topology: Topology, spec: ServiceSpec) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for dep in spec.depends_on:
        if dep in topology.backing:
            out[dep] = {"condition": "service_healthy"}
            continue
        dspec = topology.services[dep]
        if dspec.local:  # what the image build does instead
            continue
        if dspec.oneshot:
            condition = "service_completed_successfully"
        elif dspec.ready or dspec.healthcheck:
            condition = "service_healthy"
        else:
            condition = "service_started"
        for inst in dspec.instances(dep):
            out[inst] = {"condition": condition}
    return out


def render_compose(topology: Topology, rel_root: str = "../..") -> dict[str, Any]:
    """The compose document (a dict) for `topology`; `rel_root` is the repo root from it."""
    services: dict[str, Any] = {}
    for name in topology.backing:
        services[name] = _backing_service(topology.backing[name].kind)
        if topology.backing[name].restart != "no":
            services[name]["restart"] = topology.backing[name].restart
    for name, spec in topology.rendered().items():
        for inst in spec.instances(name):
            ctx = _context(topology, inst)
            env = {"SERVICE_NAME": name, "INSTANCE_NAME": inst}
            svc: dict[str, Any]
            if spec.image is not None:  # its own image, command and files: no shared volume
                build: dict[str, Any] = {"context": rel_root, "dockerfile": "Dockerfile",
                                         "target": spec.image.target}
                if spec.image.args:
                    build["args"] = dict(spec.image.args)
                svc = {"image": spec.image.tag, "build": build, "environment": env}
            else:
                env.update({k: v.format_map(ctx) for k, v in spec.env.items()})
                if spec.app:
                    command = serve_command(spec.app)
                else:
                    command = [arg.format_map(ctx) for arg in spec.run or []]
                svc = {
                    "image": IMAGE,
                    "build": {"context": rel_root, "dockerfile": "Dockerfile"},
                    "command": command,
                    "environment": env,
                    "volumes": [f"run-data:{DATA_DIR}"],
                }
            if spec.ready:
                svc["healthcheck"] = _healthcheck(_http_probe(spec.ready))
            elif spec.healthcheck:
                test = [arg.format_map(ctx) for arg in spec.healthcheck]
                svc["healthcheck"] = _healthcheck(["CMD", *test])
            if spec.oneshot or spec.restart != "no":
                svc["restart"] = spec.restart
            if not spec.oneshot:
                svc["stop_grace_period"] = f"{APP_STOP_S if spec.app else WORKER_STOP_S}s"
            deps = _depends(topology, spec)
            if deps:
                svc["depends_on"] = deps
            if name == topology.entry and inst == spec.instances(name)[0]:
                svc["ports"] = [f"${{{PORT_VAR}:-{APP_PORT}}}:{APP_PORT}"]
            services[inst] = svc
    doc: dict[str, Any] = {"name": topology.name.replace("_", "-"), "services": services}
    if any("volumes" in svc for svc in services.values()):
        doc["volumes"] = {"run-data": {}}
    return doc


def compose_text(topology: Topology, path: str, rel_root: str = "../..") -> str:
    body = yaml.safe_dump(
        render_compose(topology, rel_root), sort_keys=False, width=100, default_flow_style=None
    )
    return HEADER.format(path=path) + body


def render_file(topology: Topology, folder: Path, repo_root: Path) -> tuple[Path, str]:
    """(path of the compose file, its expected text) for a pattern folder."""
    rel = folder.resolve().relative_to(repo_root.resolve())
    rel_root = "/".join([".."] * len(rel.parts)) or "."
    target = folder / "docker-compose.yml"
    return target, compose_text(topology, f"{rel.as_posix()}/docker-compose.yml", rel_root)
