"""The controller of L2: the closed loop from a drift alert to a promoted (or refused) model.

One cycle: `triggered` (a firing alert on POST /webhook, the drift monitor's Alertmanager
webhook, or POST /cycles) -> `retrained` (a run of T1's training job, POST /jobs on its API,
followed until it registers a version) -> `gated` (`blessing.gate`: absolute bar, no worse than
the stable model beyond a margin, every class's recall, then the candidate loaded and queried
in the real predictor) -> `deployed` (REPLICAS predictors that register themselves and appear
in the proxy's GET /services) -> `canary` (PUT /rollout on the proxy: CANARY_WEIGHT percent,
judged by the online A/B guard) -> `promoted` or `rolled_back` (the canary's predictors
stopped). A refused candidate is never deployed. Every step is an event with its time
(`GET /cycles/{id}`: the timeline). At start-up a boot cycle trains, gates and deploys the
first stable version (no canary: there is nothing to compare with) and writes the training
distribution the monitor compares the log against; the controller is ready after it.
Every RETIRE_INTERVAL_S the versions neither stable nor on trial are retired once older than
MAX_AGE_S.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import aiohttp
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lifecycle_patterns.training_to_serving import blessing
from lifecycle_patterns.training_to_serving.deployer import Deployer, DeploySettings
from patternkit.db import make_engine
from patternkit.monitor import save_reference
from patternkit.predlog import stream_table
from patternkit.service import (
    ApiError,
    ServiceState,
    background,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings
from training_patterns.batch_training import dwh, train

log = logging.getLogger("training_to_serving.controller")

Status = Literal["running", "promoted", "rejected", "rolled_back", "failed"]
CYCLES_KEPT = 100
METADATA = sa.MetaData()
LOG_TABLE = stream_table("training_to_serving", METADATA)  # the consumer's, the monitor reads


class ControllerSettings(ServiceSettings):
    service_name: str = "controller"
    api_url: str = Field(..., description="the training job's API (T1): POST /jobs")
    repo_url: str = Field(..., description="the model repository the predictors load from")
    repo_dir: str = Field(..., description="its folder (the gate reads candidates there)")
    database_url: str = Field(..., description="the DWH: the gate's held-out rows")
    registry_url: str = Field(..., description="Redis: the service registry and the log")
    proxy_url: str = Field(..., description="the proxy: GET /services, PUT /rollout")
    log_dir: str = Field(..., description="where the predictors' logs go")
    reference_dir: str = Field(..., description="where the training distribution is written")
    deploy_host: str = Field("127.0.0.1", description="the predictors bind and advertise this "
                                                      "host: the controller's own name")
    model_name: str = Field(train.MODEL_NAME, description="the model in the repository")
    log_prefix: str = Field("training_to_serving", description="<prefix>_prediction_log")
    replicas: int = Field(2, ge=1, le=5, description="predictors per version")
    registry_ttl_s: float = Field(3.0, ge=1, description="the predictors' heartbeat TTL")
    canary_weight: float = Field(30.0, gt=0, le=100, description="percent to the canary")
    canary_timeout_s: float = Field(120.0, gt=0, description="a canary undecided by then is "
                                                             "rolled back")
    min_accuracy: float = Field(0.9, ge=0, le=1, description="the gate's absolute bar")
    max_regression: float = Field(0.02, ge=0, le=1, description="... margin to the stable")
    min_slice_recall: float = Field(0.8, ge=0, le=1, description="... bar of every class")
    infra_timeout_s: float = Field(30.0, gt=0, description="the sandbox predictor's start")
    train_timeout_s: float = Field(120.0, gt=0, description="a training run's deadline")
    max_age_s: float = Field(60.0, gt=0, description="old versions retire at this age")
    retire_interval_s: float = Field(1.0, gt=0, description="how often ages are checked")
    trigger_rules: str = Field("feature_drift", description="alert rules that start a cycle")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    C: float = Field(1.0, gt=0, le=1e6)
    max_iter: int = Field(1000, ge=10, le=100_000)


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_mode: str = Field("none", pattern=r"^(none|always|first_n:\d+|every:\d+|rate:[0-9.]+)$")
    delay_ms: int = Field(0, ge=0, le=10_000)


class CycleIn(BaseModel):
    """A cycle by API: what the training run uses, and a fault drill for the canary."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"reason": "weekly retrain", "seed": 1}, {"params": {"C": 0.0005}},
        {"seed": 2, "canary_faults": {"fail_mode": "every:4"}}]})

    reason: str = Field("POST /cycles", max_length=200)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    params: Params | None = None
    canary_faults: Faults | None = Field(None, description="injected into the candidate's "
                                                           "predictors (patternkit.faults)")


class AlertIn(BaseModel):
    """An Alertmanager webhook message (what patternkit.monitor.AlertPoster sends)."""

    model_config = ConfigDict(extra="allow")

    status: str = "firing"
    alerts: list[dict[str, Any]] = Field(..., min_length=1, max_length=1000)


@dataclass
class Cycle:
    id: int
    trigger: str
    request: dict[str, Any]
    status: Status = "running"
    version: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)

    def event(self, step: str, detail: str, **values: Any) -> None:
        at = time.time()
        self.events.append({"step": step, "at": at, "t_s": round(at - self.started, 2),
                            "detail": detail, **values})
        log.info("cycle %d: %s: %s", self.id, step, detail)

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "trigger": self.trigger, "status": self.status,
                "version": self.version, "started": self.started, "request": self.request,
                "timeline": self.events, "gate": self.gate}


class CycleEnded(Exception):
    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Loop:
    def __init__(self, cfg: ControllerSettings, engine: sa.Engine, deployer: Deployer,
                 session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.engine = engine
        self.deployer = deployer
        self.session = session
        self.cycles: list[Cycle] = []
        self.ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None
        self.alerts: list[dict[str, Any]] = []
        self.ignored_alerts = 0
        self.retired: list[dict[str, Any]] = []
        self.bars = blessing.Bars(cfg.min_accuracy, cfg.max_regression, cfg.min_slice_recall)
        self.rules = {r.strip() for r in cfg.trigger_rules.split(",") if r.strip()}

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def get(self, cycle_id: int) -> Cycle:
        for c in self.cycles:
            if c.id == cycle_id:
                return c
        raise ApiError(404, f"no cycle {cycle_id}", "cycle_not_found")

    def start(self, trigger: str, request: dict[str, Any], step: str = "triggered") -> Cycle:
        if self.busy:
            running = self.cycles[-1]
            raise ApiError(409, f"cycle {running.id} is running ({running.trigger})",
                           "cycle_running", [{"cycle": running.id}])
        cycle = Cycle(next(self.ids), trigger, request)
        self.cycles.append(cycle)
        del self.cycles[:-CYCLES_KEPT]
        cycle.event(step, trigger)
        self.task = asyncio.create_task(self.run(cycle), name=f"cycle-{cycle.id}")
        return cycle

    # -- calls to the other services ----------------------------------------------------------

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, url, json=body,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def rollout(self) -> dict[str, Any]:
        status, body = await self.call("GET", f"{self.cfg.proxy_url}/rollout")
        if status != 200:
            raise CycleEnded("failed", f"the proxy answered {status} to GET /rollout")
        return dict(body)

    async def retrain(self, cycle: Cycle) -> str:
        req = cycle.request
        job = {"seed": req.get("seed"), "params": req.get("params"),
               "min_accuracy": 0.0, "max_regression": 1.0}  # the gate judges, not the job
        status, body = await self.call("POST", f"{self.cfg.api_url}/jobs", job)
        if status != 202:
            raise CycleEnded("failed", f"the training API answered {status}: {body}")
        job_id = body["job_id"]
        deadline = time.monotonic() + self.cfg.train_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            _, run = await self.call("GET", f"{self.cfg.api_url}/jobs/{job_id}")
            if run["status"] == "succeeded":
                cycle.version = run["version"]
                cycle.event("retrained", f"training run {job_id} registered "
                            f"{self.cfg.model_name} {run['version']}", job_id=job_id,
                            metrics=run.get("metrics"))
                return str(run["version"])
            if run["status"] in ("failed", "rejected"):
                raise CycleEnded("failed", f"training run {job_id} {run['status']}: "
                                 f"{run.get('error')}")
        raise CycleEnded("failed", f"training run {job_id} did not finish within "
                         f"{self.cfg.train_timeout_s:g} s (TRAIN_TIMEOUT_S)")

    async def deploy(self, cycle: Cycle, version: str, faults: dict[str, Any] | None) -> None:
        spawned = [await self.deployer.spawn(version, faults=faults)
                   for _ in range(self.cfg.replicas)]
        try:
            await asyncio.gather(*(self.deployer.wait_ready(m, self.cfg.infra_timeout_s)
                                   for m in spawned))
        except (TimeoutError, OSError) as exc:
            await self.deployer.stop_version(version, "deploy failed")
            raise CycleEnded("failed", f"deploy of {version} failed: {exc}") from None
        ids = {m.id for m in spawned}
        deadline = time.monotonic() + 3 * self.cfg.registry_ttl_s + 5
        while time.monotonic() < deadline:  # registered and seen by the proxy
            _, body = await self.call("GET", f"{self.cfg.proxy_url}/services")
            if ids <= set(body["versions"].get(version, [])):
                cycle.event("deployed", f"{len(ids)} predictors of {version} registered and "
                            "in the proxy's members", members=sorted(ids),
                            faults=faults or None)
                return
            await asyncio.sleep(0.2)
        raise CycleEnded("failed", f"{sorted(ids)} never appeared in the proxy's members")

    async def canary(self, cycle: Cycle, version: str) -> None:
        status, body = await self.call("PUT", f"{self.cfg.proxy_url}/rollout",
                                       {"canary": version, "weight": self.cfg.canary_weight})
        if status != 200:
            raise CycleEnded("failed", f"the proxy refused the canary: {status} {body}")
        phase = body["phase"]
        cycle.event("canary", f"{version} takes {self.cfg.canary_weight:g}% beside stable "
                    f"{body['stable']} (phase {phase}); the guard judges it", phase=phase)
        deadline = time.monotonic() + self.cfg.canary_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            found = await self.rollout()
            ends = [h for h in found["history"] if h["phase"] > phase
                    and h.get("version") == version and h["event"] in ("promoted", "rolled_back")]
            later = [h for h in found["history"] if h["phase"] > phase]
            if ends:
                end = ends[0]
                rails = end.get("guardrails")
                if end["event"] == "promoted":
                    cycle.event("promoted", f"{version} is the stable version after "
                                f"{end.get('checks')} passed guard checks", guardrails=rails)
                    cycle.status = "promoted"
                    return
                gone = await self.deployer.stop_version(version, "rolled back by the guard")
                cycle.event("rolled_back", f"the guard rolled {version} back: "
                            f"{end.get('reason')}; stopped {gone}", guardrails=rails)
                raise CycleEnded("rolled_back", str(end.get("reason")))
            if later:
                raise CycleEnded("failed", f"the rollout changed meanwhile: {later[0]}")
        await self.call("PUT", f"{self.cfg.proxy_url}/rollout", {"canary": None})
        await self.deployer.stop_version(version, "canary timed out")
        raise CycleEnded("rolled_back", f"no decision within {self.cfg.canary_timeout_s:g} s")

    async def run(self, cycle: Cycle) -> None:
        try:
            version = await self.retrain(cycle)
            stable = (await self.rollout())["stable"]
            verdict = await blessing.gate(
                version, stable, Path(self.cfg.repo_dir), self.cfg.model_name, self.engine,
                self.bars, self.deployer, self.cfg.infra_timeout_s)
            cycle.gate = verdict.view()
            if not verdict.blessed:
                cycle.event("gated", "rejected: " + "; ".join(verdict.failed()), blessed=False)
                raise CycleEnded("rejected", "; ".join(verdict.failed()))
            cycle.event("gated", "blessed: " + ", ".join(
                f"{c['check']} passed" for c in verdict.checks), blessed=True)
            faults = cycle.request.get("canary_faults") if stable else None
            await self.deploy(cycle, version, faults)
            if stable is None:
                await self.call("PUT", f"{self.cfg.proxy_url}/rollout", {"stable": version})
                cycle.event("promoted", f"{version} is the first stable version (no canary: "
                            "nothing to compare with)")
                cycle.status = "promoted"
                return
            await self.canary(cycle, version)
        except CycleEnded as end:
            cycle.status = end.status
            if end.status == "failed":
                cycle.event("failed", str(end))
        except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError) as exc:
            cycle.status = "failed"
            cycle.event("failed", f"{type(exc).__name__}: {exc}")

    # -- alerts and retirement ----------------------------------------------------------------

    def on_alerts(self, message: AlertIn) -> dict[str, Any]:
        firing = [a for a in message.alerts if a.get("status") == "firing"
                  and (a.get("labels") or {}).get("rule") in self.rules]
        self.alerts.extend(message.alerts)
        del self.alerts[:-200]
        if not firing:
            return {"started": None, "reason": "no firing alert of TRIGGER_RULES"}
        if self.busy:
            self.ignored_alerts += len(firing)
            return {"started": None, "reason": f"cycle {self.cycles[-1].id} is running"}
        summary = (firing[0].get("annotations") or {}).get("summary", firing[0]["labels"])
        cycle = self.start(f"drift detected: {summary}", {"reason": "alert"}, "drift_detected")
        return {"started": cycle.id}

    async def retire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.retire_interval_s)
            with suppress(aiohttp.ClientError, TimeoutError, OSError, CycleEnded):
                found = await self.rollout()
                keep = {v for v in (found["stable"], found["canary"]) if v}
                if self.busy and self.cycles[-1].version:
                    keep.add(self.cycles[-1].version)  # deploying or on trial
                for m in await self.deployer.retire_old(keep, self.cfg.max_age_s):
                    self.retired.append({"at": time.time(), "member": m.id,
                                         "version": m.version, "why": m.stopped})

    def write_reference(self) -> Path:
        clean = train.validate(train.gather(self.engine))
        return save_reference(self.cfg.reference_dir, clean.X, clean.y, list(dwh.FEATURES),
                              train.CLASSES)


class Resources(TypedDict):
    loop: Loop


LoopDep = Annotated[Loop, Depends(from_state("loop"))]
CycleId = Annotated[int, PathParam(ge=1)]


async def post_cycle(body: CycleIn, loop: LoopDep) -> Response:
    """Start a cycle now (retrain, gate, deploy, canary), as a drift alert would."""
    cycle = loop.start(body.reason, body.model_dump(exclude_none=True))
    return json_response(cycle.view(), 202)


async def list_cycles(loop: LoopDep) -> Response:
    return json_response({"busy": loop.busy, "cycles": [c.view() for c in loop.cycles]})


async def get_cycle(cycle_id: CycleId, loop: LoopDep) -> Response:
    return json_response(loop.get(cycle_id).view())


async def webhook(body: AlertIn, loop: LoopDep) -> Response:
    """The drift monitor's Alertmanager webhook: a firing TRIGGER_RULES alert starts a cycle."""
    return json_response({"received": len(body.alerts), **loop.on_alerts(body)}, 202)


async def deployments(loop: LoopDep) -> Response:
    """The predictor processes this controller started, running or stopped, and retirements."""
    return json_response({"members": [m.view() for m in loop.deployer.members],
                          "retired": loop.retired, "max_age_s": loop.cfg.max_age_s})


def create_app(settings: ControllerSettings | None = None) -> FastAPI:
    cfg = settings or ControllerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        async with AsyncExitStack() as stack:
            engine = make_engine(cfg.database_url)
            stack.callback(engine.dispose)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            deployer = Deployer(DeploySettings(
                cfg.repo_url, cfg.model_name, cfg.registry_url, cfg.registry_url,
                cfg.log_prefix, Path(cfg.log_dir), cfg.registry_ttl_s, cfg.deploy_host))
            stack.push_async_callback(deployer.aclose)
            loop = Loop(cfg, engine, deployer, session)
            await asyncio.to_thread(loop.write_reference)

            async def boot() -> None:
                found = await loop.rollout()
                if found["stable"] is None:
                    cycle = loop.start("boot: no stable version yet", {"reason": "boot"})
                    assert loop.task is not None
                    await loop.task
                    if cycle.status != "promoted":
                        log.critical("the boot cycle ended %s: %s", cycle.status,
                                     cycle.events[-1]["detail"])
                        return
                state.ready = True

            await stack.enter_async_context(background(boot()))
            await stack.enter_async_context(background(loop.retire_loop()))
            state.metadata.update(bars=vars(loop.bars), replicas=cfg.replicas,
                                  canary_weight=cfg.canary_weight, max_age_s=cfg.max_age_s,
                                  trigger_rules=sorted(loop.rules))
            yield {"loop": loop}

    app = create_service(cfg, title="training-to-serving: controller", lifespan=lifespan,
                         auto_ready=False)
    app.post("/cycles", status_code=202, tags=["loop"], responses={409: {}, 422: {}})(post_cycle)
    app.get("/cycles", tags=["loop"])(list_cycles)
    app.get("/cycles/{cycle_id}", tags=["loop"], responses={404: {}})(get_cycle)
    app.post("/webhook", status_code=202, tags=["loop"], responses={422: {}})(webhook)
    app.get("/deployments", tags=["loop"])(deployments)
    return app
