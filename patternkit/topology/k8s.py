"""The Kubernetes renderer: the same topology as a `k8s.yaml`, committed per pattern.

One namespace per pattern and one image (the project's Dockerfile) for every Python service:
an app becomes a Deployment and a Service (probes from `ready` and `/health`, a preStop pause
and a grace period that covers the server's drain), a worker a Deployment probed by its
heartbeat file, a oneshot a Job (a CronJob with `schedule`), a backing service a StatefulSet
(Redis; PostgreSQL for kind "sql"). Services marked `scale` get a HorizontalPodAutoscaler and
a PodDisruptionBudget; services whose replicas are addressed one by one (`{svc.urls}`) are a
StatefulSet behind a headless Service, so each replica has a stable DNS name. `depends_on`
becomes an init container (`python -m patternkit.gate wait`); files (models, a Job's
completion mark) go through the pattern's `run-data` volume. A service with `image` runs its
own image (a stage of the root Dockerfile) and that image's command; `local` services are left
out. A `run` command with a `ready` path is an HTTP server like an app. See docs/deploy.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from patternkit import heartbeat
from patternkit.catalogue import role_of
from patternkit.topology.compose import (
    APP_PORT,
    BACKING_IMAGES,
    DRAIN_S,
    IMAGE,
    WORKER_STOP_S,
    serve_command,
)
from patternkit.topology.schema import (
    ServiceSpec,
    Topology,
    addressed_one_by_one,
    heartbeat_probe,
    placeholder_fields,
)

K8S_VERSION = "1.33.0"  # the version every rendered file is validated against (strict)
DATA_DIR = "/data"  # {run_dir}: the run-data volume, as in compose
DONE_DIR = f"{DATA_DIR}/.done"  # a Job writes <name> here when it succeeded
HEARTBEAT_DIR = "/heartbeat"  # pod-local: replicas of one worker must not share a file
DATA_VOLUME = "run-data"
DATA_SIZE = "1Gi"
PRESTOP_S = 5  # endpoints drop the pod before it stops taking connections
APP_GRACE_S = PRESTOP_S + DRAIN_S + 5  # DRAIN_S: uvicorn's graceful shutdown, as in compose
WORKER_GRACE_S = WORKER_STOP_S  # a Celery worker's warm shutdown finishes its current task
GATE_TIMEOUT_S = 900
JOB_BACKOFF = 3
USER_ID = 1000  # the image's `app` user
MANAGED_BY = "patternkit"
REDIS_IMAGE = BACKING_IMAGES["redis"]
POSTGRES_IMAGE = BACKING_IMAGES["sql"]
PG_USER, PG_DB, PG_PASSWORD = "postgres", "patterns", "patterns"  # as the compose files
BACKING_PORTS = {"redis": 6379, "sql": 5432}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

APP_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"},
                 "limits": {"cpu": "1", "memory": "1Gi"}}
GATE_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"},
                  "limits": {"cpu": "200m", "memory": "128Mi"}}
REDIS_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"},
                   "limits": {"cpu": "500m", "memory": "256Mi"}}
POSTGRES_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}}

HEADER = """\
# Rendered from topology.toml by `python -m patternkit render`; do not edit by hand.
# Kubernetes >= 1.25 (validated against {version}); one namespace per pattern; see docs/deploy.md.
#   docker build -t {image} .        # from the repository root; then load or push it
{builds}#   kubectl apply -f {path}
#   kubectl -n {namespace} port-forward svc/{entry} {port}:{port}
"""


def dns(name: str) -> str:
    """A topology name as a Kubernetes object name (DNS label): `iris_lr` -> `iris-lr`."""
    out = name.replace("_", "-").lower()
    if not DNS_LABEL.match(out):
        raise ValueError(f"{name!r} cannot be a Kubernetes name (a DNS label: a-z, 0-9, -)")
    return out


def namespace(topology: Topology) -> str:
    return dns(topology.name)


def backing_kind(topology: Topology, name: str) -> str:
    """A backing service's kind as a string (the schema may or may not know "sql" yet)."""
    return str(topology.backing[name].kind)


def is_member_set(topology: Topology, name: str) -> bool:
    """Replicas addressed one by one: a StatefulSet behind a headless Service."""
    return topology.services[name].replicas > 1 and name in addressed_one_by_one(topology)


def member_hosts(topology: Topology, name: str) -> list[str]:
    svc = dns(name)
    if not is_member_set(topology, name):
        return [svc]
    return [f"{svc}-{i}.{svc}" for i in range(topology.services[name].replicas)]


def password_var(name: str) -> str:
    return f"{name.upper()}_PG_PASSWORD"


def secret_name(name: str) -> str:
    return f"{dns(name)}-credentials"


def context(topology: Topology) -> dict[str, Any]:
    """Placeholder values: every address is a Service's DNS name in the pattern's namespace;
    `{name}` is the pod's own name (kubelet expands `$(INSTANCE_NAME)`)."""
    ctx: dict[str, Any] = {"port": APP_PORT, "run_dir": DATA_DIR, "python": "python",
                           "name": "$(INSTANCE_NAME)"}
    for name in topology.backing:
        host, kind = dns(name), backing_kind(topology, name)
        port = BACKING_PORTS[kind]
        if kind == "sql":
            url = f"postgresql://{PG_USER}:$({password_var(name)})@{host}:{port}/{PG_DB}"
        else:
            url = f"redis://{host}:{port}/0"
        ctx[name] = SimpleNamespace(url=url, urls=url, host=host, port=port)
    for name in topology.services:
        urls = [f"http://{h}:{APP_PORT}" for h in member_hosts(topology, name)]
        ctx[name] = SimpleNamespace(url=f"http://{dns(name)}:{APP_PORT}", urls=",".join(urls),
                                    host=dns(name), port=APP_PORT)
    return ctx


def labels(topology: Topology, name: str, component: str) -> dict[str, str]:
    """The Kubernetes recommended labels."""
    part_of = namespace(topology)
    return {
        "app.kubernetes.io/name": dns(name),
        "app.kubernetes.io/instance": f"{part_of}-{dns(name)}",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": part_of,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(topology: Topology, name: str) -> dict[str, str]:
    return {k: v for k, v in labels(topology, name, "").items()
            if k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}


def meta(topology: Topology, name: str, component: str, obj: str | None = None) -> dict[str, Any]:
    return {"name": obj or dns(name), "namespace": namespace(topology),
            "labels": labels(topology, name, component)}


def component_of(spec: ServiceSpec) -> str:
    """The role the service's module names (`predictor`, `proxy`, `trainer`, ...)."""
    if spec.worker:
        return "worker"
    module = spec.app.split(":")[0] if spec.app else None
    run = spec.run or []
    if module is None:
        module = next((run[i + 1] for i, a in enumerate(run[:-1]) if a in ("-m", "-A")
                       and run[i + 1] != "celery"), None)
    role = role_of(module) if module else None
    return role or ("job" if spec.oneshot else "process")


def serves_http(spec: ServiceSpec) -> bool:
    """An app, or a long-running command with a `ready` path: it listens on {port}."""
    return spec.app is not None or (spec.run is not None and spec.ready is not None
                                     and not spec.oneshot and spec.worker is None)


def template_texts(spec: ServiceSpec) -> list[str]:
    if spec.image is not None:  # none of its local command and env is rendered
        return [*(spec.healthcheck or [])]
    return [*spec.env.values(), *(spec.run or []), *(spec.healthcheck or [])]


def uses(spec: ServiceSpec, field: str) -> bool:
    """Whether the service's env or command names the placeholder field (or `field.x`)."""
    return any(f == field or f.startswith(field + ".")
               for text in template_texts(spec) for f in placeholder_fields(text))


def is_job(spec: ServiceSpec) -> bool:
    return spec.oneshot and spec.schedule is None


def rendered_deps(topology: Topology, spec: ServiceSpec) -> list[str]:
    """`depends_on` without the `local` services (the image build does what they do)."""
    return [d for d in spec.depends_on
            if d in topology.backing or not topology.services[d].local]


def needs_data(topology: Topology, spec: ServiceSpec) -> bool:
    """Whether the pod mounts run-data: it uses {run_dir}, is a Job or waits for one."""
    waits = any(d in topology.services and is_job(topology.services[d])
                for d in rendered_deps(topology, spec))
    return uses(spec, "run_dir") or is_job(spec) or waits


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
            "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def sql_backings_used(topology: Topology, spec: ServiceSpec) -> list[str]:
    return [n for n in topology.backing
            if backing_kind(topology, n) == "sql" and uses(spec, n)]


def env_of(topology: Topology, name: str, spec: ServiceSpec) -> list[dict[str, Any]]:
    ctx = context(topology)
    env: list[dict[str, Any]] = [
        {"name": "SERVICE_NAME", "value": name},
        {"name": "INSTANCE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if spec.image is not None:
        return env
    for db in sql_backings_used(topology, spec):
        env.append({"name": password_var(db), "valueFrom": {
            "secretKeyRef": {"name": secret_name(db), "key": "password"}}})
    for key, value in spec.env.items():
        if spec.heartbeat and key == heartbeat.ENV_VAR:
            value = heartbeat_path(name)
        env.append({"name": key, "value": value.format_map(ctx)})
    return env


def heartbeat_path(name: str) -> str:
    return f"{HEARTBEAT_DIR}/{name}"


def command_of(topology: Topology, spec: ServiceSpec) -> list[str] | None:
    """The container's command; None: the image's own (a service with `image`)."""
    if spec.image is not None:
        return None
    if spec.app:
        return serve_command(spec.app)
    ctx = context(topology)
    return [arg.format_map(ctx) for arg in spec.run or []]


def probes(topology: Topology, name: str, spec: ServiceSpec) -> dict[str, Any]:
    """Readiness from `ready`, liveness from `/health` (HTTP servers); a worker's heartbeat."""
    if serves_http(spec):
        def http(path: str, period: int, failures: int) -> dict[str, Any]:
            return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
                    "timeoutSeconds": 2, "failureThreshold": failures}
        return {
            "startupProbe": http("/health", 1, 60),
            "readinessProbe": http(spec.ready or "/ready", 2, 2),
            "livenessProbe": http("/health", 10, 3),
        }
    check: list[str] | None = None
    if spec.heartbeat and spec.healthcheck == heartbeat_probe(spec.heartbeat):
        check = heartbeat_probe(heartbeat_path(name))
    elif spec.healthcheck:
        ctx = context(topology)
        check = [arg.format_map(ctx) for arg in spec.healthcheck]
    if check is None:
        return {}

    def run(period: int, failures: int) -> dict[str, Any]:
        return {"exec": {"command": check}, "periodSeconds": period, "timeoutSeconds": 3,
                "failureThreshold": failures}
    return {"startupProbe": run(2, 60), "readinessProbe": run(5, 2),
            "livenessProbe": run(10, 3)}


def gate_container(topology: Topology, spec: ServiceSpec) -> dict[str, Any] | None:
    """An init container that waits for what `depends_on` names: a backing service's port, an
    app's readiness (every replica of a member set), a Job's completion mark."""
    args: list[str] = []
    for dep in rendered_deps(topology, spec):
        if dep in topology.backing:
            args += ["--tcp", f"{dns(dep)}:{BACKING_PORTS[backing_kind(topology, dep)]}"]
            continue
        dspec = topology.services[dep]
        if dspec.oneshot:
            args += ["--file", f"{DONE_DIR}/{dep}"]
        elif serves_http(dspec):
            for host in member_hosts(topology, dep):
                args += ["--http", f"http://{host}:{APP_PORT}{dspec.ready}"]
        # a worker or a command has no address to probe from another pod
    if not args:
        return None
    box: dict[str, Any] = {
        "name": "wait-for-dependencies",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "patternkit.gate", "wait", *args,
                    "--timeout", str(GATE_TIMEOUT_S)],
        "resources": GATE_RESOURCES,
        "securityContext": container_security(),
    }
    if "--file" in args:
        box["volumeMounts"] = [{"name": DATA_VOLUME, "mountPath": DATA_DIR}]
    return box


def pod_spec(topology: Topology, name: str, spec: ServiceSpec) -> dict[str, Any]:
    command = command_of(topology, spec)
    if is_job(spec) and command is not None:
        command = ["python", "-m", "patternkit.gate", "done", f"{DONE_DIR}/{name}", "--",
                   *command]
    box: dict[str, Any] = {
        "name": dns(name),
        "image": spec.image.tag if spec.image is not None else IMAGE,
        "imagePullPolicy": "IfNotPresent",
    }
    if command is not None:
        box["command"] = command
    box["env"] = env_of(topology, name, spec)
    if serves_http(spec):
        box["ports"] = [{"name": "http", "containerPort": APP_PORT}]
    box.update(probes(topology, name, spec))
    if serves_http(spec):
        box["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}}
    box["resources"] = APP_RESOURCES
    box["securityContext"] = container_security()
    mounts, volumes = [], []
    if needs_data(topology, spec):
        mounts.append({"name": DATA_VOLUME, "mountPath": DATA_DIR})
        volumes.append({"name": DATA_VOLUME,
                        "persistentVolumeClaim": {"claimName": DATA_VOLUME}})
    if spec.heartbeat:
        mounts.append({"name": "heartbeat", "mountPath": HEARTBEAT_DIR})
        volumes.append({"name": "heartbeat", "emptyDir": {"medium": "Memory",
                                                          "sizeLimit": "1Mi"}})
    if mounts:
        box["volumeMounts"] = mounts
    pod: dict[str, Any] = {"securityContext": pod_security()}
    gate = gate_container(topology, spec)
    if gate is not None:
        pod["initContainers"] = [gate]
    pod["containers"] = [box]
    if spec.oneshot:
        pod["restartPolicy"] = "Never"
    else:
        pod["terminationGracePeriodSeconds"] = APP_GRACE_S if serves_http(spec) else WORKER_GRACE_S
    if volumes:
        pod["volumes"] = volumes
    return pod


def template(topology: Topology, name: str, spec: ServiceSpec) -> dict[str, Any]:
    return {"metadata": {"labels": labels(topology, name, component_of(spec))},
            "spec": pod_spec(topology, name, spec)}


def service_objects(topology: Topology, name: str, spec: ServiceSpec) -> list[dict[str, Any]]:
    """The objects of one topology service."""
    comp = component_of(spec)
    if spec.schedule is not None:
        return [{
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta(topology, name, comp),
            "spec": {"schedule": spec.schedule, "timeZone": "Etc/UTC",
                     "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 3,
                     "failedJobsHistoryLimit": 3,
                     "jobTemplate": {"spec": {"backoffLimit": JOB_BACKOFF,
                                              "template": template(topology, name, spec)}}},
        }]
    if spec.oneshot:
        return [{
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta(topology, name, comp),
            "spec": {"backoffLimit": JOB_BACKOFF, "template": template(topology, name, spec)},
        }]
    objects: list[dict[str, Any]] = []
    members = is_member_set(topology, name)
    if serves_http(spec):
        svc_spec: dict[str, Any] = {
            "selector": selector(topology, name),
            "ports": [{"name": "http", "port": APP_PORT, "targetPort": "http"}],
        }
        if members:  # each replica keeps a DNS name (name-0.name); the proxy judges readiness
            svc_spec = {"clusterIP": "None", "publishNotReadyAddresses": True, **svc_spec}
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": meta(topology, name, comp), "spec": svc_spec})
    workload: dict[str, Any] = {
        "replicas": spec.replicas,
        "selector": {"matchLabels": selector(topology, name)},
    }
    if members:
        kind = "StatefulSet"
        workload = {"serviceName": dns(name), "podManagementPolicy": "Parallel", **workload}
    else:
        kind = "Deployment"
        if serves_http(spec) or spec.worker:
            workload["strategy"] = {"type": "RollingUpdate",
                                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        else:  # a plain long-running command (e.g. a scheduler) may not tolerate a twin
            workload["strategy"] = {"type": "Recreate"}
    workload["template"] = template(topology, name, spec)
    objects.append({"apiVersion": "apps/v1", "kind": kind,
                    "metadata": meta(topology, name, comp), "spec": workload})
    if spec.scale is not None:
        objects.append({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(topology, name, comp),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(topology, name)}},
        })
        objects.append({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": meta(topology, name, comp),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": dns(name)},
                "minReplicas": spec.scale.min, "maxReplicas": spec.scale.max,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": spec.scale.cpu},
                }}],
            },
        })
    return objects


def backing_objects(topology: Topology, name: str) -> list[dict[str, Any]]:
    """A backing service: a StatefulSet with a headless governing Service and a ClusterIP
    Service for clients; PostgreSQL keeps its data on a claim of its own."""
    kind = backing_kind(topology, name)
    comp = "database" if kind == "sql" else "redis"
    port = BACKING_PORTS[kind]
    ports = [{"name": kind if kind != "sql" else "postgres", "port": port,
              "targetPort": port}]
    sel = selector(topology, name)
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(topology, name, comp),
         "spec": {"selector": sel, "ports": ports}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": meta(topology, name, comp, f"{dns(name)}-headless"),
         "spec": {"clusterIP": "None", "selector": sel, "ports": ports}},
    ]
    box: dict[str, Any]
    claims: list[dict[str, Any]] = []
    if kind == "sql":
        check = {"exec": {"command": ["pg_isready", "-U", PG_USER, "-d", PG_DB]}}
        box = {
            "name": "postgres", "image": POSTGRES_IMAGE,
            "env": [
                {"name": "POSTGRES_USER", "value": PG_USER},
                {"name": "POSTGRES_DB", "value": PG_DB},
                {"name": "POSTGRES_PASSWORD", "valueFrom": {
                    "secretKeyRef": {"name": secret_name(name), "key": "password"}}},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
            ],
            "ports": [{"name": "postgres", "containerPort": port}],
            "readinessProbe": {**check, "periodSeconds": 2, "timeoutSeconds": 3,
                               "failureThreshold": 3},
            "livenessProbe": {**check, "initialDelaySeconds": 30, "periodSeconds": 10,
                              "timeoutSeconds": 5, "failureThreshold": 6},
            "resources": POSTGRES_RESOURCES,
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
        }
        claims = [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": DATA_SIZE}}}}]
    else:
        box = {
            "name": "redis", "image": REDIS_IMAGE,
            "args": ["redis-server", "--save", "", "--appendonly", "no"],
            "ports": [{"name": "redis", "containerPort": port}],
            "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 2,
                               "timeoutSeconds": 3, "failureThreshold": 3},
            "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10,
                              "timeoutSeconds": 3, "failureThreshold": 3},
            "resources": REDIS_RESOURCES,
        }
    stateful: dict[str, Any] = {
        "serviceName": f"{dns(name)}-headless", "replicas": 1,
        "selector": {"matchLabels": sel},
        "template": {"metadata": {"labels": labels(topology, name, comp)},
                     "spec": {"terminationGracePeriodSeconds": 30, "containers": [box]}},
    }
    if claims:
        stateful["volumeClaimTemplates"] = claims
    objects.append({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": meta(topology, name, comp), "spec": stateful})
    return objects


def render_k8s(topology: Topology) -> list[dict[str, Any]]:
    """The manifests (a list of objects, in apply order) for `topology`."""
    services = topology.rendered()
    names = [dns(n) for n in [*topology.backing, *services]]
    if len(set(names)) != len(names):
        raise ValueError(f"{topology.name}: two services share a Kubernetes name: {names}")
    ns = namespace(topology)
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": ns,
                                            "app.kubernetes.io/managed-by": MANAGED_BY}},
    }]
    for name in topology.backing:
        if backing_kind(topology, name) == "sql":
            docs.append({"apiVersion": "v1", "kind": "Secret",
                         "metadata": meta(topology, name, "database", secret_name(name)),
                         "type": "Opaque", "stringData": {"password": PG_PASSWORD}})
    if any(needs_data(topology, spec) for spec in services.values()):
        docs.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": DATA_VOLUME, "namespace": ns,
                         "labels": {"app.kubernetes.io/part-of": ns,
                                    "app.kubernetes.io/managed-by": MANAGED_BY}},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": DATA_SIZE}}},
        })
    for name in topology.backing:
        docs.extend(backing_objects(topology, name))
    for name, spec in services.items():
        docs.extend(service_objects(topology, name, spec))
    return docs


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a value used twice is written twice, never as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def k8s_text(topology: Topology, path: str) -> str:
    body = yaml.dump_all(render_k8s(topology), Dumper=_Dumper, sort_keys=False, width=100,
                         default_flow_style=None)
    builds = "".join(
        f"#   docker build --target {spec.image.target}"
        + "".join(f" --build-arg {k}={v}" for k, v in spec.image.args.items())
        + f" -t {spec.image.tag} .\n"
        for spec in topology.rendered().values() if spec.image is not None
    )
    return HEADER.format(version=K8S_VERSION, image=IMAGE, path=path, builds=builds,
                         namespace=namespace(topology), entry=dns(topology.entry),
                         port=APP_PORT) + body


def render_k8s_file(topology: Topology, folder: Path, repo_root: Path) -> tuple[Path, str]:
    """(path of the k8s.yaml, its expected text) for a pattern folder."""
    rel = folder.resolve().relative_to(repo_root.resolve())
    return folder / "k8s.yaml", k8s_text(topology, f"{rel.as_posix()}/k8s.yaml")
