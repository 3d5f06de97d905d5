"""The `topology.toml` schema: which processes a pattern is made of and how they are wired.

A service is an ASGI app (`app = "module:create_app"`, run by uvicorn), a command (`run`) or
a Celery worker (`worker = "module"`: a solo-pool `celery -A module worker` whose readiness
and healthcheck are its heartbeat file, see `worker_command`).
`depends_on` orders start-up, `ready` / `ready_log` say when a service is up, `restart`
(`no`, `on-failure`, `always`) whether the runner brings it back after it exits, `env` wires it
with placeholders (`{port}`, `{run_dir}`, `{python}`, `{name}`, `{svc.url}`, `{svc.urls}`,
`{redis.url}`). Backing services (`[backing.redis] kind = "redis"`) are provided by the runner;
`[backing.db] kind = "sql"` is a database URL (`{db.url}`): SQLite in the run directory, or
`DATABASE_URL` when it is set. A service with `image` runs a stage of the root Dockerfile of
its own in compose and Kubernetes (a model baked into its server, O1), and `local = true`
marks a local stand-in for what that image build does (not rendered there).
A bad file raises `TopologyError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import string
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patternkit import heartbeat

TOPOLOGY_FILE = "topology.toml"
GLOBAL_PLACEHOLDERS = frozenset({"port", "run_dir", "python", "name"})
SERVICE_ATTRS = frozenset({"url", "urls", "host", "port"})
Restart = Literal["no", "on-failure", "always"]
RESTART_HELP = "whether the runner brings the service back when it exits (as compose's restart)"


WORKER_HEARTBEAT = "{run_dir}/heartbeats/{name}"  # where a `worker` refreshes its heartbeat
HEARTBEAT_HELP = (
    "file the process refreshes while healthy (HEARTBEAT_FILE): its readiness in the runner, "
    "its healthcheck in compose"
)


def worker_command(module: str, queue: str | None = None) -> list[str]:
    """The command a `worker = "module"` service runs: one solo-pool process per instance
    (scale with `replicas`), named `{name}@host`, without the broadcast chatter (gossip,
    mingle, event heartbeats) that nothing here uses; `-Q` only when `queue` is given (else
    the app's own default queue, as `patternkit.jobs.make_celery` names it)."""
    command = [
        "{python}", "-m", "celery", "-A", module, "worker",
        "--pool=solo", "--concurrency=1", "--loglevel=INFO", "-n", "{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if queue:
        command += ["-Q", queue]
    return command


def heartbeat_probe(path: str) -> list[str]:
    """The healthcheck for a heartbeat file: milliseconds, no Celery import."""
    return ["python", "-m", "patternkit.probe", "--heartbeat", path,
            "--max-age", f"{heartbeat.MAX_AGE_S:g}"]


class TopologyError(ValueError):
    """A topology file that cannot be read or does not follow the schema."""


class ScaleSpec(BaseModel):
    """`scale = { min = 1, max = 4, cpu = 70 }`: a service an autoscaler may scale (in
    Kubernetes a HorizontalPodAutoscaler on CPU and a PodDisruptionBudget); `replicas` stays
    the count it starts with, locally and in compose."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(1, ge=1, le=64, description="fewest replicas")
    max: int = Field(4, ge=1, le=64, description="most replicas")
    cpu: int = Field(70, ge=1, le=100, description="target CPU use, % of the CPU request")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ImageSpec(BaseModel):
    """`image = { target = "model-in-image", tag = "...", args = { MODEL_VERSION = "1.0.0" } }`:
    in compose and Kubernetes the service runs its own image, the root Dockerfile's stage
    `target` built with `args` and tagged `tag`, with that image's own command and no env but
    its name (its `run` or `app` and `env` are how the local runner starts the same thing)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(..., pattern=r"^[a-z][a-z0-9_.-]*$", description="Dockerfile stage")
    tag: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._/-]*:[\w][\w.-]*$",
                     description="the image reference, name:tag")
    args: dict[str, str] = Field(default_factory=dict, description="--build-arg values")


IMAGE_HELP = "its own image in compose and Kubernetes (a Dockerfile stage), see ImageSpec"
LOCAL_HELP = (
    "a local stand-in for what an `image` build does (e.g. training and bundling the model "
    "baked into it): started by the runner only, not rendered in compose or Kubernetes, and "
    "dropped from the `depends_on` of services rendered there"
)
SCALE_HELP = "marks the service scalable: bounds and CPU target of its autoscaler"
SCHEDULE_HELP = (
    "cron schedule of a oneshot: in Kubernetes a CronJob; locally and in compose it runs once"
)


class ServiceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    app: str | None = Field(None, pattern=r"^[\w.]+:\w+$", description="module:factory")
    run: list[str] | None = Field(None, min_length=1, description="command and arguments")
    worker: str | None = Field(None, pattern=r"^[\w.]+$", description="Celery app module")
    queue: str | None = Field(None, pattern=r"^[\w.,-]+$", description="a worker's -Q queues")
    heartbeat: str | None = Field(None, description=HEARTBEAT_HELP)
    oneshot: bool = False
    ready: str | None = Field(None, pattern=r"^/", description="HTTP path polled until 200")
    ready_log: str | None = Field(None, description="regex that marks a command as ready")
    healthcheck: list[str] | None = Field(None, description="compose healthcheck command")
    depends_on: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(1, ge=1, le=16)
    restart: Restart = Field("no", description=RESTART_HELP)
    scale: ScaleSpec | None = Field(None, description=SCALE_HELP)
    schedule: str | None = Field(None, pattern=r"^(@\w+|\S+( \S+){4})$",
                                 description=SCHEDULE_HELP)
    image: ImageSpec | None = Field(None, description=IMAGE_HELP)
    local: bool = Field(False, description=LOCAL_HELP)

    @model_validator(mode="after")
    def _one_kind(self) -> ServiceSpec:
        if sum(kind is not None for kind in (self.app, self.run, self.worker)) != 1:
            raise ValueError("set exactly one of `app` (module:factory), `run` (a command) or "
                             "`worker` (a Celery app module)")
        if self.queue is not None and self.worker is None:
            raise ValueError("`queue` is for `worker` services")
        if self.worker is not None:
            if self.oneshot:
                raise ValueError("a `worker` runs until stopped: `oneshot` is for `run` commands")
            self.run = worker_command(self.worker, self.queue)
            self.heartbeat = self.heartbeat or WORKER_HEARTBEAT
        if self.heartbeat is not None:
            self.env.setdefault(heartbeat.ENV_VAR, self.heartbeat)
            if self.healthcheck is None:
                self.healthcheck = heartbeat_probe(self.heartbeat)
        if self.app is not None and self.oneshot:
            raise ValueError("`oneshot` is for `run` commands, not apps")
        if self.app is not None and self.ready is None:
            self.ready = "/ready"
        if self.oneshot and self.replicas != 1:
            raise ValueError("a oneshot service has exactly one replica")
        if self.oneshot and self.restart != "no":
            raise ValueError("a oneshot service runs once: `restart` is for long-running ones")
        return self

    @model_validator(mode="after")
    def _scale_and_schedule(self) -> ServiceSpec:
        if self.scale is not None:
            if self.oneshot:
                raise ValueError("`scale` is for long-running services, not a oneshot")
            if not self.scale.min <= self.replicas <= self.scale.max:
                raise ValueError(f"replicas ({self.replicas}) is outside scale "
                                 f"[{self.scale.min}, {self.scale.max}]")
        if self.schedule is not None and not self.oneshot:
            raise ValueError("`schedule` repeats a oneshot: set `oneshot = true`")
        return self

    def instances(self, name: str) -> list[str]:
        if self.replicas == 1:
            return [name]
        return [f"{name}-{i}" for i in range(1, self.replicas + 1)]


class BackingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["redis", "sql"]
    description: str = ""
    restart: Restart = Field("no", description=RESTART_HELP)


class Example(BaseModel):
    """The request `make run` suggests to try (a POST with a JSON body)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("/predict", pattern=r"^/")
    body: str = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
    headers: dict[str, str] = Field(default_factory=dict)


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    id: str = Field(..., description="catalogue id, e.g. S1")
    title: str
    summary: str
    proves: str = Field("", description="one line: what its demo shows (the tour's summary)")
    category: Literal["serving", "qa", "training", "operation", "lifecycle", "antipattern"]
    entry: str = Field(..., description="the service a user talks to")
    scenario: str | None = Field(None, pattern=r"^[\w.]+:\w+$")
    example: Example = Field(default_factory=lambda: Example())
    backing: dict[str, BackingSpec] = Field(default_factory=dict)
    services: dict[str, ServiceSpec] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _wiring(self) -> Topology:
        names = set(self.services) | set(self.backing)
        if set(self.services) & set(self.backing):
            raise ValueError("a name is used both as a service and a backing service")
        if self.entry not in self.services:
            raise ValueError(f"entry {self.entry!r} is not a service")
        for name, spec in self.services.items():
            for dep in spec.depends_on:
                if dep not in names:
                    raise ValueError(f"services.{name}.depends_on: unknown service {dep!r}")
            for key, value in spec.env.items():
                check_placeholders(value, names, f"services.{name}.env.{key}")
            for i, arg in enumerate(spec.run or []):
                check_placeholders(arg, names, f"services.{name}.run.{i}")
            for i, arg in enumerate(spec.healthcheck or []):
                check_placeholders(arg, names, f"services.{name}.healthcheck.{i}")
            if spec.heartbeat:
                check_placeholders(spec.heartbeat, names, f"services.{name}.heartbeat")
        self.order()  # raises on a cycle
        return self

    @model_validator(mode="after")
    def _local_stays_local(self) -> Topology:
        if self.services[self.entry].local:
            raise ValueError(f"entry {self.entry!r} is `local`: compose and Kubernetes need it")
        for name, spec in self.services.items():
            if spec.image is not None and spec.local:
                raise ValueError(f"services.{name}: `image` is for compose and Kubernetes, "
                                 "`local` keeps a service out of them; not both")
            if spec.image is not None or spec.local:
                continue
            for dep in spec.depends_on:
                if dep in self.services and self.services[dep].local:
                    raise ValueError(f"services.{name}.depends_on: {dep!r} is `local` (not in "
                                     "compose or Kubernetes); only a service with `image` or "
                                     "another `local` one may depend on it")
        return self

    @model_validator(mode="after")
    def _scaling_fits_wiring(self) -> Topology:
        addressed = addressed_one_by_one(self)
        for name, spec in self.services.items():
            if spec.scale is not None and name in addressed:
                raise ValueError(
                    f"services.{name}.scale: {{{name}.urls}} addresses each replica, so an "
                    "autoscaler would add replicas nobody calls; set `replicas` instead"
                )
            for dep in spec.depends_on:
                dspec = self.services.get(dep)
                if dspec is not None and dspec.schedule is not None:
                    raise ValueError(f"services.{name}.depends_on: {dep!r} runs on a schedule; "
                                     "nothing can wait for it to finish")
        return self

    def rendered(self) -> dict[str, ServiceSpec]:
        """The services compose and Kubernetes run: all but the `local` ones."""
        return {name: spec for name, spec in self.services.items() if not spec.local}

    def order(self) -> list[list[str]]:
        """Names (backing and services) grouped in start-up levels; level n needs only < n."""
        deps = {name: set(spec.depends_on) for name, spec in self.services.items()}
        deps.update({name: set() for name in self.backing})
        levels: list[list[str]] = []
        done: set[str] = set()
        while len(done) < len(deps):
            level = sorted(n for n, d in deps.items() if n not in done and d <= done)
            if not level:
                cycle = sorted(n for n in deps if n not in done)
                raise ValueError(f"depends_on has a cycle among: {', '.join(cycle)}")
            levels.append(level)
            done.update(level)
        return levels


def placeholder_fields(text: str) -> list[str]:
    """The `{...}` fields of a template string (`svc.url`, `run_dir`, ...)."""
    return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


def addressed_one_by_one(topology: Topology) -> set[str]:
    """Services whose replicas someone addresses one by one (`{svc.urls}` is used)."""
    found: set[str] = set()
    for spec in topology.services.values():
        for text in [*spec.env.values(), *(spec.run or []), *(spec.healthcheck or [])]:
            with contextlib.suppress(ValueError):
                found.update(f.partition(".")[0] for f in placeholder_fields(text)
                             if f.endswith(".urls"))
    return found


def check_placeholders(text: str, names: set[str], where: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} in {text!r}") from None
    for field in fields:
        svc, dot, attr = field.partition(".")
        if not dot and field in GLOBAL_PLACEHOLDERS:
            continue
        if dot and svc in names and attr in SERVICE_ATTRS:
            continue
        raise ValueError(
            f"{where}: unknown placeholder {{{field}}}; use {{port}}, {{run_dir}}, {{python}}, "
            f"{{name}} or {{service.url|urls|host|port}} of a declared service"
        )


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (or the `topology.toml` inside a folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / TOPOLOGY_FILE
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{p}: not valid TOML: {exc}") from None
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            loc = ".".join(str(part) for part in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise TopologyError(f"{p}: " + "; ".join(problems)) from None
