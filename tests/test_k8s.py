"""The Kubernetes renderer: what each topology feature becomes, on small topologies."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from patternkit.topology import Topology, TopologyError, load_topology
from patternkit.topology.k8s import (
    APP_GRACE_S,
    DATA_DIR,
    DRAIN_S,
    PRESTOP_S,
    k8s_text,
    render_k8s,
)
from patternkit.topology.schema import BackingSpec

TRAINER = {"run": ["{python}", "-m", "patternkit.trainer", "--out", "{run_dir}/models/m"],
           "oneshot": True}
PREDICTOR = {"app": "patternkit.predictor:create_app", "depends_on": ["trainer"],
             "env": {"MODEL_PATH": "{run_dir}/models/m"}}


def topo(services: dict[str, Any], entry: str | None = None, **extra: Any) -> Topology:
    return Topology.model_validate(
        {"name": "my_pattern", "id": "X", "title": "t", "summary": "s", "category": "serving",
         "entry": entry or next(iter(services)), "services": services, **extra}
    )


def objects(topology: Topology, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render_k8s(topology) if o["kind"] == kind}


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod_spec: dict[str, Any] = spec["template"]["spec"]
    return pod_spec


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_an_app_is_a_deployment_and_service_with_probes_and_a_graceful_stop() -> None:
    t = topo({"trainer": TRAINER, "predictor": PREDICTOR}, entry="predictor")
    deployment = objects(t, "Deployment")["predictor"]
    service = objects(t, "Service")["predictor"]
    box = pod(deployment)["containers"][0]
    assert box["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert box["livenessProbe"]["httpGet"]["path"] == "/health"
    assert box["command"][:4] == ["python", "-m", "patternkit.serve",
                                  "patternkit.predictor:create_app"]
    drain = box["command"][box["command"].index("--timeout-graceful-shutdown") + 1]
    assert drain == str(DRAIN_S)
    assert box["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_S)]
    assert pod(deployment)["terminationGracePeriodSeconds"] == APP_GRACE_S > PRESTOP_S + DRAIN_S
    assert box["resources"]["requests"] and box["resources"]["limits"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 8000
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "predictor"
    assert labels["app.kubernetes.io/part-of"] == "my-pattern"
    assert labels["app.kubernetes.io/component"] == "predictor"
    assert deployment["metadata"]["namespace"] == "my-pattern"
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in render_k8s(t)}


def test_the_model_goes_from_the_trainer_job_to_predictors_through_the_run_data_volume() -> None:
    t = topo({"trainer": TRAINER, "predictor": PREDICTOR}, entry="predictor")
    job = objects(t, "Job")["trainer"]
    job_box = pod(job)["containers"][0]
    assert job_box["command"][:6] == ["python", "-m", "patternkit.gate", "done",
                                      f"{DATA_DIR}/.done/trainer", "--"]
    assert job_box["command"][-1] == f"{DATA_DIR}/models/m"
    assert pod(job)["restartPolicy"] == "Never"
    predictor = pod(objects(t, "Deployment")["predictor"])
    gate = predictor["initContainers"][0]
    assert gate["command"][3:6] == ["wait", "--file", f"{DATA_DIR}/.done/trainer"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in predictor["volumes"]}
    assert claims == {"run-data"} and "run-data" in objects(t, "PersistentVolumeClaim")
    assert env(predictor["containers"][0])["MODEL_PATH"] == f"{DATA_DIR}/models/m"


def test_replicas_addressed_one_by_one_are_a_stateful_set_with_stable_names() -> None:
    t = topo({
        "trainer": TRAINER,
        "predictor": {**PREDICTOR, "replicas": 3},
        "lb": {"app": "m.proxy:create_app", "depends_on": ["predictor"],
               "env": {"BACKEND_URLS": "{predictor.urls}", "ONE": "{predictor.url}"}},
    }, entry="lb")
    members = objects(t, "StatefulSet")["predictor"]
    assert members["spec"]["replicas"] == 3
    assert members["spec"]["serviceName"] == "predictor"
    headless = objects(t, "Service")["predictor"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    lb = pod(objects(t, "Deployment")["lb"])
    urls = [f"http://predictor-{i}.predictor:8000" for i in range(3)]
    assert env(lb["containers"][0])["BACKEND_URLS"] == ",".join(urls)
    assert env(lb["containers"][0])["ONE"] == "http://predictor:8000"
    gate = lb["initContainers"][0]["command"]
    assert [gate[i + 1] for i, a in enumerate(gate) if a == "--http"] == [u + "/ready"
                                                                          for u in urls]


def test_replicas_nobody_addresses_one_by_one_are_a_deployment() -> None:
    t = topo({"trainer": TRAINER, "predictor": {**PREDICTOR, "replicas": 3}}, entry="predictor")
    assert objects(t, "Deployment")["predictor"]["spec"]["replicas"] == 3
    assert "clusterIP" not in objects(t, "Service")["predictor"]["spec"]


def test_a_scalable_service_gets_an_autoscaler_and_a_disruption_budget() -> None:
    t = topo({"trainer": TRAINER,
              "predictor": {**PREDICTOR, "replicas": 2, "scale": {"min": 2, "max": 6, "cpu": 60}}},
             entry="predictor")
    hpa = objects(t, "HorizontalPodAutoscaler")["predictor"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "predictor"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    pdb = objects(t, "PodDisruptionBudget")["predictor"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == objects(t, "Deployment")["predictor"]["spec"]["selector"]


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ({"a": {"app": "m:f", "scale": {"min": 3, "max": 2}}}, "min (3) is above max (2)"),
        ({"a": {"app": "m:f", "replicas": 5, "scale": {"max": 4}}}, "outside scale [1, 4]"),
        ({"a": {"run": ["x"], "oneshot": True, "scale": {}}}, "not a oneshot"),
        ({"a": {"app": "m:f", "replicas": 2, "scale": {}},
          "b": {"app": "m:f", "env": {"U": "{a.urls}"}}}, "addresses each replica"),
        ({"a": {"run": ["x"], "schedule": "0 * * * *"}}, "set `oneshot = true`"),
        ({"a": {"run": ["x"], "oneshot": True, "schedule": "hourly"}}, "services.a.schedule"),
        ({"a": {"run": ["x"], "oneshot": True, "schedule": "@hourly"},
          "b": {"app": "m:f", "depends_on": ["a"]}}, "runs on a schedule"),
    ],
)
def test_scale_and_schedule_are_checked(services: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        topo(services)


def test_a_scheduled_oneshot_is_a_cron_job() -> None:
    t = topo({"api": {"app": "m.api:create_app"},
              "tick": {"run": ["{python}", "-m", "m.tick"], "oneshot": True,
                       "schedule": "0 * * * *"}})
    cron = objects(t, "CronJob")["tick"]
    assert cron["spec"]["schedule"] == "0 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod(cron)["containers"][0]["command"] == ["python", "-m", "m.tick"]
    assert "Job" not in {o["kind"] for o in render_k8s(t)}


def test_a_worker_is_probed_by_its_own_pod_local_heartbeat() -> None:
    t = topo({"api": {"app": "m.api:create_app"},
              "worker": {"worker": "m.worker", "replicas": 2, "depends_on": ["redis"],
                         "env": {"REDIS_URL": "{redis.url}"}, "scale": {"max": 8}}},
             backing={"redis": {"kind": "redis"}})
    deployment = objects(t, "Deployment")["worker"]
    box = pod(deployment)["containers"][0]
    assert "ports" not in box and "worker" not in objects(t, "Service")
    beat = env(box)["HEARTBEAT_FILE"]
    assert not beat.startswith(DATA_DIR)
    assert box["readinessProbe"]["exec"]["command"][:5] == [
        "python", "-m", "patternkit.probe", "--heartbeat", beat]
    assert box["livenessProbe"]["exec"]["command"] == box["readinessProbe"]["exec"]["command"]
    mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
    assert "emptyDir" in volumes[mounts[beat.rsplit("/", 1)[0]]]
    command = box["command"]
    assert command[command.index("-n") + 1] == "$(INSTANCE_NAME)@%h"
    assert env(box)["INSTANCE_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env(box)["REDIS_URL"] == "redis://redis:6379/0"
    assert pod(deployment)["initContainers"][0]["command"][3:6] == ["wait", "--tcp",
                                                                    "redis:6379"]
    assert objects(t, "HorizontalPodAutoscaler")["worker"]["spec"]["maxReplicas"] == 8


def test_redis_is_a_stateful_set() -> None:
    t = topo({"api": {"app": "m.api:create_app", "env": {"R": "{redis.url}"}}},
             backing={"redis": {"kind": "redis"}})
    redis = objects(t, "StatefulSet")["redis"]
    assert pod(redis)["containers"][0]["image"].startswith("redis:")
    assert redis["spec"]["serviceName"] == "redis-headless"
    assert objects(t, "Service")["redis"]["spec"]["ports"][0]["port"] == 6379


def test_a_sql_backing_is_postgresql_with_its_password_in_a_secret() -> None:
    t = topo({"api": {"app": "m.api:create_app", "depends_on": ["db"],
                      "env": {"DATABASE_URL": "{db.url}"}}},
             backing={"db": {"kind": "redis"}})
    # read as a string whether or not this branch's schema knows "sql" yet
    t.backing["db"] = BackingSpec.model_construct(kind="sql", description="", restart="no")
    pg = objects(t, "StatefulSet")["db"]
    box = pod(pg)["containers"][0]
    assert box["image"].startswith("postgres:")
    assert box["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    secret = objects(t, "Secret")["db-credentials"]
    assert env(box)["POSTGRES_PASSWORD"] == {
        "secretKeyRef": {"name": "db-credentials", "key": "password"}}
    api = pod(objects(t, "Deployment")["api"])
    names = [e["name"] for e in api["containers"][0]["env"]]
    assert names.index("DB_PG_PASSWORD") < names.index("DATABASE_URL")
    assert env(api["containers"][0])["DATABASE_URL"] == (
        "postgresql://postgres:$(DB_PG_PASSWORD)@db:5432/patterns")
    assert secret["stringData"]["password"]
    assert api["initContainers"][0]["command"][3:6] == ["wait", "--tcp", "db:5432"]


def test_names_become_dns_labels_everywhere() -> None:
    t = topo({"iris_lr": {"app": "m:f"},
              "proxy": {"app": "m.proxy:create_app", "depends_on": ["iris_lr"],
                        "env": {"URLS": "iris_lr={iris_lr.url}"}}}, entry="proxy")
    assert "iris-lr" in objects(t, "Deployment")
    proxy = pod(objects(t, "Deployment")["proxy"])
    assert env(proxy["containers"][0])["URLS"] == "iris_lr=http://iris-lr:8000"
    assert "kubectl -n my-pattern port-forward svc/proxy" in k8s_text(t, "x/k8s.yaml")


def test_a_name_kubernetes_cannot_take_is_an_error() -> None:
    with pytest.raises(ValueError, match="DNS label"):
        render_k8s(topo({"Bad.Name": {"app": "m:f"}}))


def test_the_rendered_file_is_plain_yaml_of_every_object() -> None:
    t = load_topology("serving_patterns/asynchronous")
    docs = list(yaml.safe_load_all(k8s_text(t, "serving_patterns/asynchronous/k8s.yaml")))
    assert docs == render_k8s(t)
    assert docs[0]["kind"] == "Namespace"
    with pytest.raises(TopologyError):
        load_topology("serving_patterns/no_such_pattern")


BAKED = {"run": ["{python}", "-m", "m.predictor", "--port", "{port}"], "ready": "/ready",
         "depends_on": ["trainer"], "env": {"BUNDLES": "{run_dir}/bundles"},
         "image": {"target": "model-in-image", "tag": "my-model:1.2.0",
                   "args": {"MODEL_VERSION": "1.2.0"}}}


def test_a_service_with_its_own_image_runs_it_without_the_local_stand_ins() -> None:
    """O1: the image holds the model; the local trainer is not rendered, nor waited for."""
    from patternkit.topology.compose import render_compose

    t = topo({"trainer": {**TRAINER, "local": True}, "predictor": BAKED}, entry="predictor")
    assert set(objects(t, "Deployment")) == {"predictor"} and not objects(t, "Job")
    box = pod(objects(t, "Deployment")["predictor"])["containers"][0]
    assert box["image"] == "my-model:1.2.0" and "command" not in box
    assert set(env(box)) == {"SERVICE_NAME", "INSTANCE_NAME"}  # its local env is not its own
    assert box["readinessProbe"]["httpGet"]["path"] == "/ready"  # a run with ready: HTTP
    assert "initContainers" not in pod(objects(t, "Deployment")["predictor"])
    assert "volumeMounts" not in box and not objects(t, "PersistentVolumeClaim")
    assert objects(t, "Service")["predictor"]["spec"]["ports"][0]["port"] == 8000
    assert "--target model-in-image --build-arg MODEL_VERSION=1.2.0 -t my-model:1.2.0" in \
        k8s_text(t, "x/k8s.yaml")
    compose = render_compose(t)
    assert set(compose["services"]) == {"predictor"} and "volumes" not in compose
    svc = compose["services"]["predictor"]
    assert svc["image"] == "my-model:1.2.0" and "command" not in svc and "depends_on" not in svc
    assert svc["build"]["target"] == "model-in-image"
    assert svc["build"]["args"] == {"MODEL_VERSION": "1.2.0"}


@pytest.mark.parametrize(
    ("services", "entry", "message"),
    [
        ({"trainer": {**TRAINER, "local": True}, "predictor": PREDICTOR}, "predictor",
         "'trainer' is `local`"),
        ({"predictor": {**BAKED, "depends_on": [], "local": True}}, "predictor",
         "entry 'predictor' is `local`"),
        ({"api": {"app": "m:f"}, "p": {**BAKED, "depends_on": [], "local": True}}, "api",
         "not both"),
    ],
)
def test_local_services_stay_local(services: dict[str, Any], entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topo(services, entry=entry)
