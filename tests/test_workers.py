"""`worker = "module"` services: the schema expansion, compose rendering, the heartbeat that
is their readiness and healthcheck, and the worker settings of patternkit.jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from patternkit import heartbeat, probe
from patternkit.client import wait_until
from patternkit.jobs import WorkerSettings
from patternkit.topology import Stack, StackError, Topology, TopologyError, load_topology
from patternkit.topology.compose import render_compose
from patternkit.topology.schema import worker_command
from serving_patterns.asynchronous.worker import PredictionWorkerSettings
from serving_patterns.batch.worker import BatchWorkerSettings

HEAD = 'name = "t"\nid = "X"\ntitle = "t"\nsummary = "s"\ncategory = "serving"\n'
PROBE = [sys.executable, "-m", "patternkit.probe", "--heartbeat"]


def topo(services: dict[str, Any], **extra: Any) -> Topology:
    return Topology.model_validate(
        {"name": "t", "id": "X", "title": "t", "summary": "s", "category": "serving",
         "entry": next(iter(services)), "services": services, **extra}
    )


# -- schema and compose ---------------------------------------------------------------------


def test_a_worker_declaration_expands_to_the_celery_command_and_a_heartbeat() -> None:
    spec = topo({"w": {"worker": "pkg.worker", "env": {"DELAY_MS": "5"}}}).services["w"]
    assert spec.run == worker_command("pkg.worker")
    assert spec.run[:6] == ["{python}", "-m", "celery", "-A", "pkg.worker", "worker"]
    for flag in ("--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"):
        assert flag in spec.run
    assert spec.run[spec.run.index("-n") + 1] == "{name}@%h"
    assert "-Q" not in spec.run  # the app's own default queue
    assert spec.heartbeat == "{run_dir}/heartbeats/{name}"
    assert spec.env == {"DELAY_MS": "5", "HEARTBEAT_FILE": "{run_dir}/heartbeats/{name}"}
    assert spec.healthcheck is not None
    assert spec.healthcheck[:5] == ["python", "-m", "patternkit.probe", "--heartbeat",
                                    "{run_dir}/heartbeats/{name}"]
    assert "celery" not in spec.healthcheck


def test_a_worker_can_name_its_queues_and_keep_its_own_healthcheck() -> None:
    spec = topo({"w": {"worker": "pkg.worker", "queue": "a,b",
                       "healthcheck": ["true"]}}).services["w"]
    assert spec.run is not None and spec.run[-2:] == ["-Q", "a,b"]
    assert spec.healthcheck == ["true"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('[services.a]\nworker = "m"\nrun = ["x"]\n', "exactly one of"),
        ('[services.a]\nworker = "m:app"\n', "services.a.worker"),
        ('[services.a]\nworker = "m"\noneshot = true\n', "oneshot"),
        ('[services.a]\nrun = ["x"]\nqueue = "q"\n', "`queue` is for `worker`"),
        ('[services.a]\nworker = "m"\nheartbeat = "{nope.url}/hb"\n', "{nope.url}"),
    ],
)
def test_bad_worker_declarations_name_the_problem(tmp_path: Path, body: str, names: str) -> None:
    (tmp_path / "topology.toml").write_text(HEAD + 'entry = "a"\n' + body)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    assert names in str(err.value)


def test_compose_renders_a_worker_with_its_heartbeat_healthcheck() -> None:
    t = topo({"api": {"app": "m:f", "depends_on": ["w"]},
              "w": {"worker": "pkg.worker", "replicas": 2, "depends_on": ["redis"],
                    "env": {"REDIS_URL": "{redis.url}"}}},
             backing={"redis": {"kind": "redis"}})
    services = render_compose(t)["services"]
    w2 = services["w-2"]
    assert w2["command"][:6] == ["python", "-m", "celery", "-A", "pkg.worker", "worker"]
    assert w2["command"][w2["command"].index("-n") + 1] == "w-2@%h"
    assert w2["environment"]["HEARTBEAT_FILE"] == "/data/heartbeats/w-2"
    assert w2["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    test = w2["healthcheck"]["test"]
    assert test[:6] == ["CMD", "python", "-m", "patternkit.probe", "--heartbeat",
                        "/data/heartbeats/w-2"]
    assert "ports" not in w2
    assert services["api"]["depends_on"] == {"w-1": {"condition": "service_healthy"},
                                             "w-2": {"condition": "service_healthy"}}


def test_the_three_celery_patterns_declare_their_workers_in_one_line() -> None:
    root = Path(__file__).resolve().parents[1] / "serving_patterns"
    for folder, service in (("asynchronous", "worker"), ("batch", "worker"),
                            ("multiple_stage_prediction", "heavy")):
        spec = load_topology(root / folder).services[service]
        assert spec.worker == f"serving_patterns.{folder}.worker"
        assert spec.ready_log is None and spec.heartbeat is not None


# -- the heartbeat and its probe ------------------------------------------------------------


def test_the_probe_says_fresh_stale_missing_and_malformed(tmp_path: Path) -> None:
    hb = tmp_path / "hb" / "w"
    assert probe.main(["--heartbeat", str(hb)]) == 1  # no file yet
    heartbeat.beat(hb)
    assert probe.main(["--heartbeat", str(hb)]) == 0
    old = time.time() - 60
    os.utime(hb, (old, old))
    assert probe.main(["--heartbeat", str(hb)]) == 1
    assert probe.main(["--heartbeat", str(hb), "--max-age", "120"]) == 0
    for bad in (["--heartbeat"], ["--heartbeat", str(hb), "--max-age", "soon"],
                ["--heartbeat", str(hb), "--since", "1"], [], ["--what"]):
        assert probe.main(bad) == 2


def test_the_probe_command_exits_0_then_1_without_importing_celery(tmp_path: Path) -> None:
    hb = tmp_path / "w"
    heartbeat.beat(hb)
    fresh = subprocess.run([sys.executable, "-X", "importtime", "-m", "patternkit.probe",
                            "--heartbeat", str(hb)], capture_output=True, text=True, timeout=30)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in fresh.stderr.splitlines()}
    assert "patternkit.heartbeat" in imported
    assert not {m for m in imported if m.split(".")[0] in ("celery", "kombu", "pydantic")}
    heartbeat.clear(hb)
    assert subprocess.run([*PROBE, str(hb)], timeout=30).returncode == 1


def test_a_heartbeat_refreshes_its_file_until_stopped(tmp_path: Path) -> None:
    hb = tmp_path / "deep" / "w"
    beat = heartbeat.Heartbeat(hb, interval_s=0.05)
    beat.start()
    try:
        first = hb.stat().st_mtime_ns
        wait_until(lambda: hb.stat().st_mtime_ns > first, 5, what="a second beat")
        assert heartbeat.is_fresh(hb)
        assert not heartbeat.is_fresh(hb, since=time.time() + 60)  # older than `since`
    finally:
        beat.stop()
    assert not hb.exists()


# -- the runner -----------------------------------------------------------------------------


def beater(code: str) -> dict[str, Any]:
    return {"run": ["{python}", "-c", textwrap.dedent(code)], "heartbeat": "{run_dir}/hb/{name}"}


def test_the_runner_waits_for_a_heartbeat_written_by_this_process(tmp_path: Path) -> None:
    code = """
        import os, time
        from patternkit import heartbeat
        time.sleep(0.3)
        heartbeat.beat(os.environ["HEARTBEAT_FILE"])
        time.sleep(60)
    """
    with Stack(topo({"svc": beater(code)}), tmp_path) as stack:
        hb = tmp_path.resolve() / "hb" / "svc"
        assert stack.proc("svc").heartbeat == hb
        assert stack.proc("svc").env["HEARTBEAT_FILE"] == str(hb)
        assert heartbeat.is_fresh(hb)
        assert [s.state for s in stack.status("svc")] == ["up"]


def test_a_heartbeat_left_by_an_earlier_process_does_not_make_it_ready(tmp_path: Path) -> None:
    heartbeat.beat(tmp_path.resolve() / "hb" / "svc")  # fresh, but written before the start
    t = topo({"svc": beater("import time; time.sleep(60)")})
    with pytest.raises(StackError, match="not ready after 1s"), Stack(t, tmp_path,
                                                                        ready_timeout=1):
        pass


def redis_topology() -> Topology:
    return topo({"w": {"worker": "tests.tiny_worker", "depends_on": ["redis"],
                       "env": {"REDIS_URL": "{redis.url}"}}},
                backing={"redis": {"kind": "redis"}})


def test_a_celery_worker_beats_while_connected_and_stops_when_the_broker_goes(
    tmp_path: Path,
) -> None:
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL points at an external server")
    with Stack(redis_topology(), tmp_path) as stack:
        hb = stack.proc("w").heartbeat
        assert hb is not None

        def probe_says(code: int) -> bool:
            return subprocess.run([*PROBE, str(hb)], timeout=30).returncode == code

        assert probe_says(0)
        assert "w@" in stack.log_tail("w") and "ready." in stack.log_tail("w")
        stack.kill("redis")
        wait_until(lambda: not hb.exists(), 30, what="heartbeat removed on the broker's loss")
        assert probe_says(1)
        stack.start_service("redis")
        wait_until(lambda: probe_says(0), 60, what="heartbeat back once reconnected")
        stack.stop_service("w")
        assert not hb.exists()


# -- worker settings ------------------------------------------------------------------------


def test_worker_settings_refuse_a_visibility_timeout_shorter_than_a_job() -> None:
    with pytest.raises(ValidationError, match=r"longest job \(DELAY_MS = 6000 ms\)"):
        WorkerSettings(redis_url="redis://x", delay_ms=6000)
    with pytest.raises(ValidationError, match=r"DELAY_MS \+ RETRY_BACKOFF_MS = 5200 ms"):
        PredictionWorkerSettings(redis_url="redis://x", model_path="m", delay_ms=5000,
                                 database_url="sqlite://")
    with pytest.raises(ValidationError, match="longest chunk"):
        BatchWorkerSettings(redis_url="redis://x", model_path="m", visibility_timeout_s=0.1,
                            database_url="sqlite://")
    ok = WorkerSettings(redis_url="redis://x", delay_ms=6000, visibility_timeout_s=7)
    assert ok.faults().delay_ms == 6000
    assert ok.heartbeat_file is None  # set by the topology, never needed by hand


def test_a_worker_logs_one_json_object_a_line_with_log_format_json(tmp_path: Path) -> None:
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL points at an external server")
    t = topo({"w": {"worker": "tests.tiny_worker", "depends_on": ["redis"],
                    "env": {"REDIS_URL": "{redis.url}", "LOG_FORMAT": "json"}}},
             backing={"redis": {"kind": "redis"}})
    with Stack(t, tmp_path) as stack:
        wait_until(lambda: "ready." in stack.log_tail("w"), 30, what="the worker's ready line")
        text = stack.proc("w").log_path.read_text()
    # the runner marks each start with a "--- start" line; the worker wrote the rest
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("--- ")]
    records = [json.loads(line) for line in lines]  # every line: no banner, no Celery format
    ready = [r for r in records if r["message"].endswith("ready.")]
    assert ready and ready[0]["service"] == "w" and ready[0]["level"] == "INFO"
    assert {"time", "logger", "request_id"} <= set(ready[0])
