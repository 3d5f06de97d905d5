"""The release registry and deployer of L1: where a human decides what the predictor serves.

Training (T1's job) publishes every version it builds into the model repository; this
service finds each new one there (every SYNC_S) and records it as a `candidate`: serving
does not change. `GET /models/{v}/compare` scores the candidate and the deployed model on
the candidate's held-out rows (`compare.py`); `POST /models/{v}/approve {by, note?,
deploy?}` records the human's approval, or refuses a candidate under the bar with a 409
`below_bar` naming each unmet part (the comparison in `details`); `POST /models/{v}/reject`
is the human saying no to one that passes. `POST /deploy {version, by}` makes the predictor
load an approved version with O2's `POST /admin/load` (the old model answers until the new
one is in: no failed request), and `POST /rollback {by, reason?}` is the way back: one call
that loads the version retired last. `GET /models` lists every version with its state,
`GET /events` the timeline. The same loop reconciles serving with the record, as Argo CD
does: a predictor found serving another version (restarted with its boot version) is told
to load the deployed one again; on the first boot, the version it serves is adopted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypedDict

import orjson
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from lifecycle_patterns.train_then_serve import releases
from lifecycle_patterns.train_then_serve.compare import compare
from patternkit import db
from patternkit.model_repository import VERSION_RE, ModelStore
from patternkit.proxy import Upstream
from patternkit.service import (
    ApiError,
    CounterSet,
    ServiceState,
    background,
    create_service,
    from_state,
    json_response,
)
from patternkit.settings import ServiceSettings
from training_patterns.batch_training import dwh, train

log = logging.getLogger("train_then_serve.registry")

Version = Annotated[str, PathParam(pattern=VERSION_RE.pattern, description="X.Y.Z")]
Person = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.@-]{0,63}$",
                              description="who decides (a name or an e-mail)")]


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"by": "alice", "note": "looked at the comparison", "deploy": False}]})

    by: Person
    note: str | None = Field(None, max_length=500)
    deploy: bool = Field(False, description="deploy at once when approved")


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: Person
    note: str | None = Field(None, max_length=500)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"version": "1.0.1", "by": "alice"}]})

    version: str = Field(..., pattern=VERSION_RE.pattern, description="an approved version")
    by: Person


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"by": "alice", "reason": "complaints since the deploy"}]})

    by: Person
    reason: str | None = Field(None, max_length=500)


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    database_url: str = Field(..., description="the DWH (for held-out rows) and its tables")
    repo_dir: str = Field(..., description="the model repository folder T1 publishes into")
    predictor_url: str = Field(..., description="the predictor a deploy tells to load")
    min_accuracy: float = Field(0.9, ge=0, le=1, description="the approval bar")
    max_regression: float = Field(
        0.01, ge=0, le=1, description="how far below the deployed model a candidate may be")
    sync_s: float = Field(1.0, gt=0, description="how often the repository and the "
                                                 "predictor are looked at")
    load_timeout_s: float = Field(60.0, gt=0, description="the predictor's longest load")


class Counts(CounterSet):
    PREFIX = "train_then_serve"
    candidates: Annotated[Counter, "versions found in the repository (candidates)"]
    approvals: Annotated[Counter, "candidates approved"]
    refusals: Annotated[Counter, "approvals refused: the candidate is under the bar"]
    rejections: Annotated[Counter, "candidates a human rejected"]
    deploys: Annotated[Counter, "versions deployed"]
    rollbacks: Annotated[Counter, "rollbacks to the version served before"]
    reconciles: Annotated[Counter, "times the predictor was found serving another version"]


class Registry:
    """The registry's work: reads the repository, decides with the tables, loads the
    predictor; one deploy or rollback at a time."""

    def __init__(self, cfg: RegistrySettings, engine: sa.Engine, upstream: Upstream,
                 counts: Counts, state: ServiceState) -> None:
        self.cfg = cfg
        self.engine = engine
        self.upstream = upstream
        self.counts = counts
        self.state = state
        self.repo = Path(cfg.repo_dir)
        self.store = ModelStore(self.repo / train.MODEL_NAME, name=train.MODEL_NAME)
        self.lock = asyncio.Lock()

    async def tx(self, work: Any) -> Any:
        return await db.in_tx(self.engine, work)

    async def sync(self) -> None:
        """Record each version published since the last look as a candidate."""
        published = await asyncio.to_thread(self.store.published)

        def add(conn: sa.Connection) -> list[str]:
            seen = releases.known(conn)
            new = [p for p in published if p.version not in seen]
            for p in reversed(new):  # oldest first
                releases.add_candidate(conn, p.version,
                                       p.manifest.get("provenance", {}).get("run_id"),
                                       p.manifest.get("metrics", {}), p.manifest["sha256"])
            return [p.version for p in new]

        for version in await self.tx(add):
            self.counts.candidates.inc()
            log.info("new candidate %s %s: serving is unchanged until it is approved and "
                     "deployed", train.MODEL_NAME, version)

    async def served(self) -> str | None:
        try:
            reply = await self.upstream.call("GET", f"{self.cfg.predictor_url}/metadata",
                                             timeout_s=5, name="predictor")
        except ApiError:
            return None
        body = reply.json() if reply.status == 200 else None
        return str(body["model_version"]) if isinstance(body, dict) and \
            body.get("model_version") else None

    async def load(self, version: str) -> float:
        """Have the predictor load `version`; the milliseconds it took."""
        started = time.perf_counter()
        reply = await self.upstream.call(
            "POST", f"{self.cfg.predictor_url}/admin/load",
            body=orjson.dumps({"version": version}), timeout_s=self.cfg.load_timeout_s,
            name="predictor")
        if reply.status != 200:
            body = reply.json() if reply.body.startswith(b"{") else {}
            message = body.get("message", reply.body[:200].decode()) if isinstance(
                body, dict) else str(body)
            raise ApiError(502, f"the predictor did not load {version} ({reply.status}): "
                                f"{message}; it serves what it served", "load_failed")
        return round((time.perf_counter() - started) * 1000, 1)

    async def reconcile(self) -> None:
        await self.sync()
        if self.lock.locked():
            return
        async with self.lock:
            served = await self.served()
            current = await self.tx(releases.deployed)
            if served is None:
                return
            if current is None:
                known = await self.tx(lambda c: releases.get(c, served))
                if known is None:
                    return
                await self.tx(lambda c: releases.switch(
                    c, served, None, "adopt", "registry",
                    reason="the version the predictor served at boot"))
                log.info("adopted %s %s: the predictor serves it, nothing was deployed yet",
                         train.MODEL_NAME, served)
            elif served != current["version"]:
                self.counts.reconciles.inc()
                log.warning("the predictor serves %s, the record says %s: loading %s",
                            served, current["version"], current["version"])
                took = await self.load(current["version"])
                await self.tx(lambda c: releases.event(
                    c, current["version"], "reconcile", "registry", found=served, took_ms=took))
            self.state.ready = True
            self.state.unready_reason = None

    async def loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (ApiError, sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("reconcile failed, trying again in %g s: %s", self.cfg.sync_s, exc)
            await asyncio.sleep(self.cfg.sync_s)

    async def require(self, version: str) -> dict[str, Any]:
        await self.sync()
        found: dict[str, Any] | None = await self.tx(lambda c: releases.get(c, version))
        if found is None:
            known = ", ".join(r["version"] for r in await self.tx(releases.list_releases))
            raise ApiError(404, f"{train.MODEL_NAME} {version} is not a release (known: "
                                f"{known or 'none'})", "unknown_version")
        return found

    async def comparison(self, version: str) -> dict[str, Any]:
        await self.require(version)
        current = await self.tx(releases.deployed)
        found: dict[str, Any] = await asyncio.to_thread(
            compare, self.engine, self.repo, version,
            current["version"] if current and current["version"] != version else None,
            self.cfg.min_accuracy, self.cfg.max_regression)
        return found

    async def switch(self, version: str, action: str, by: str, **detail: Any
                     ) -> dict[str, Any]:
        """Load `version` into the predictor and record it as deployed (the lock held)."""
        current = await self.tx(releases.deployed)
        previous = current["version"] if current else None
        took = await self.load(version)
        await self.tx(lambda c: releases.switch(c, version, previous, action, by,
                                                took_ms=took, **detail))
        log.info("%s by %s: %s %s -> %s (%.0f ms)", action, by, train.MODEL_NAME, previous,
                 version, took)
        return {"action": action, "version": version, "previous": previous, "by": by,
                "took_ms": took}

    def busy(self) -> ApiError:
        return ApiError(409, "a deploy or rollback is in progress; ask again when it is done",
                        "deploy_in_progress")

    async def deploy(self, version: str, by: str) -> dict[str, Any]:
        release = await self.require(version)
        if self.lock.locked():
            raise self.busy()
        async with self.lock:
            release = await self.require(version)
            if release["state"] == releases.DEPLOYED:
                raise ApiError(409, f"{version} is deployed already", "already_deployed")
            if release["state"] not in releases.DEPLOYABLE:
                raise ApiError(409, f"{version} is {release['state']}: only an approved "
                                    f"version is deployed (POST /models/{version}/approve)",
                               "not_approved")
            done = await self.switch(version, "deploy", by)
        self.counts.deploys.inc()
        return done

    async def rollback(self, by: str, reason: str | None) -> dict[str, Any]:
        if self.lock.locked():
            raise self.busy()
        async with self.lock:
            target = await self.tx(releases.rollback_target)
            current = await self.tx(releases.deployed)
            if target is None or current is None:
                raise ApiError(409, "nothing to roll back to: no version was served before "
                                    f"{current['version'] if current else 'this one'}",
                               "no_previous_version")
            done = await self.switch(target["version"], "rollback", by,
                                     reason=reason or "rolled back")
        self.counts.rollbacks.inc()
        return done


class Resources(TypedDict):
    registry: Registry


RegistryDep = Annotated[Registry, Depends(from_state("registry"))]
ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 422: {}, 502: {}}


async def list_models(reg: RegistryDep) -> Response:
    await reg.sync()
    rows = await reg.tx(releases.list_releases)
    current = next((r["version"] for r in rows if r["state"] == releases.DEPLOYED), None)
    back = await reg.tx(releases.rollback_target)
    return json_response({"name": train.MODEL_NAME, "deployed": current,
                          "rollback_to": back["version"] if back else None,
                          "bar": {"min_accuracy": reg.cfg.min_accuracy,
                                  "max_regression": reg.cfg.max_regression},
                          "releases": [releases.view(r) for r in rows]})


async def get_model(version: Version, reg: RegistryDep) -> Response:
    return json_response(releases.view(await reg.require(version)))


async def compare_model(version: Version, reg: RegistryDep) -> Response:
    return json_response(await reg.comparison(version))


async def approve(version: Version, body: Approval, reg: RegistryDep) -> Response:
    release = await reg.require(version)
    if release["state"] != releases.CANDIDATE:
        raise ApiError(409, f"{version} is {release['state']}: only a candidate is approved",
                       "not_a_candidate")
    found = await reg.comparison(version)
    if not found["passes"]:
        reason = "; ".join(found["problems"])
        await reg.tx(lambda c: releases.decide(c, version, releases.REFUSED, body.by,
                                               body.note, found, reason))
        reg.counts.refusals.inc()
        log.warning("refused to approve %s for %s: %s", version, body.by, reason)
        raise ApiError(409, f"{version} is below the bar: {reason}; serving is unchanged",
                       "below_bar", [{"problem": p} for p in found["problems"]]
                       + [{"comparison": found}])
    await reg.tx(lambda c: releases.decide(c, version, releases.APPROVED, body.by, body.note,
                                           found))
    reg.counts.approvals.inc()
    log.info("%s approved %s (accuracy %s vs deployed %s)", body.by, version,
             found["candidate"]["accuracy"], found["current"])
    out: dict[str, Any] = {"version": version, "state": releases.APPROVED, "by": body.by,
                           "comparison": found, "deploy": None}
    if body.deploy:
        out["deploy"] = await reg.deploy(version, body.by)
        out["state"] = releases.DEPLOYED
    return json_response(out)


async def reject(version: Version, body: Rejection, reg: RegistryDep) -> Response:
    release = await reg.require(version)
    if release["state"] not in (releases.CANDIDATE, releases.APPROVED):
        raise ApiError(409, f"{version} is {release['state']}: only a candidate or an approved "
                            "version is rejected", "not_a_candidate")
    found = await reg.comparison(version)
    await reg.tx(lambda c: releases.decide(c, version, releases.REFUSED, body.by, body.note,
                                           found, f"rejected by {body.by}"))
    reg.counts.rejections.inc()
    return json_response({"version": version, "state": releases.REFUSED, "by": body.by})


async def deploy(body: DeployRequest, reg: RegistryDep) -> Response:
    return json_response(await reg.deploy(body.version, body.by))


async def rollback(body: RollbackRequest, reg: RegistryDep) -> Response:
    return json_response(await reg.rollback(body.by, body.reason))


async def events(reg: RegistryDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
                 ) -> Response:
    rows = await reg.tx(lambda c: releases.list_events(c, limit))
    return json_response({"events": rows})


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    cfg = settings or RegistrySettings()
    upstream = Upstream(cfg.load_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = db.make_engine(cfg.database_url)
        await asyncio.to_thread(dwh.create_tables, engine)
        await asyncio.to_thread(db.create_tables, engine, releases.METADATA)
        state.metadata.update(model=train.MODEL_NAME, repository=cfg.repo_dir,
                              predictor=cfg.predictor_url, database=db.show_url(engine),
                              bar={"min_accuracy": cfg.min_accuracy,
                                   "max_regression": cfg.max_regression})
        state.unready_reason = "waiting to learn the version the predictor serves"
        registry = Registry(cfg, engine, upstream, Counts(state.metrics), state)
        try:
            async with background(registry.loop()):
                yield {"registry": registry}
        finally:
            engine.dispose()

    app = create_service(cfg, title="train-then-serve: release registry", lifespan=lifespan,
                         upstreams={"upstream": upstream}, auto_ready=False)
    tags: list[str | Enum] = ["releases"]
    app.get("/models", tags=tags)(list_models)
    app.get("/models/{version}", tags=tags, responses=ERRORS)(get_model)
    app.get("/models/{version}/compare", tags=tags, responses=ERRORS)(compare_model)
    app.post("/models/{version}/approve", tags=tags, responses=ERRORS)(approve)
    app.post("/models/{version}/reject", tags=tags, responses=ERRORS)(reject)
    tags = ["deploy"]
    app.post("/deploy", tags=tags, responses=ERRORS)(deploy)
    app.post("/rollback", tags=tags, responses=ERRORS)(rollback)
    app.get("/events", tags=["releases"])(events)
    return app
