"""TA1's registry API: what was handed over, and whether it can be built again.

`GET /models` lists the repository's `iris_batch` versions (T1's, with their provenance) and
the handed-over pickles (none); for each, what a rebuild would lack. `POST
/models/{version}/rebuild` retrains a version from its manifest in this process
(`rebuild.rebuild`) and answers whether metrics, predictions and the file are the same; a
handed-over pickle is a 409 `missing provenance`. Every attempt is a row of
`only_me_rebuilds` (`GET /rebuilds`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import Field

from antipatterns.only_me import rebuild as rebuilds
from patternkit import db
from patternkit.model_repository import NAME_RE, VERSION_RE, ModelStore
from patternkit.models import MANIFEST_FILE
from patternkit.service import ApiError, ServiceState, create_service, from_state, json_response
from patternkit.settings import ServiceSettings
from training_patterns.batch_training import dwh, train

METADATA = sa.MetaData()
REBUILDS = sa.Table(
    "only_me_rebuilds",
    METADATA,
    sa.Column("id", db.ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),  # reproduced | differs | <error>
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("took_s", sa.Float, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)

ModelId = Annotated[str, PathParam(max_length=64, description="an iris_batch version "
                                   "(X.Y.Z) or a handed-over pickle's name")]


class ApiSettings(ServiceSettings):
    service_name: str = "api"
    database_url: str = Field(..., description="T1's DWH and the rebuilds table ({db.url})")
    repo_dir: str = Field(..., description="the model repository folder")
    handover_dir: str = Field(..., description="where the notebook's pickles were handed over")
    work_dir: str = Field(..., description="scratch space for rebuilds")


class Resources(TypedDict):
    engine: sa.Engine


Engine = Annotated[sa.Engine, Depends(from_state("engine"))]
Settings = Annotated[ApiSettings, Depends(from_state("settings"))]
router = APIRouter()


def handed_over(cfg: ApiSettings) -> dict[str, Path]:
    folder = Path(cfg.handover_dir)
    return {p.stem: p for p in sorted(folder.glob("*.pkl"))} if folder.is_dir() else {}


def store(cfg: ApiSettings) -> ModelStore:
    return ModelStore(Path(cfg.repo_dir) / train.MODEL_NAME, name=train.MODEL_NAME)


@router.get("/models", tags=["models"])
async def list_models(cfg: Settings) -> Response:
    def read() -> list[dict[str, Any]]:
        out = []
        for p in store(cfg).published():
            prov = p.manifest.get("provenance", {})
            out.append({"id": p.version, "kind": "T1 train.py", "name": p.manifest["name"],
                        "files": sorted(f.name for f in p.folder.iterdir()),
                        "metrics": p.manifest.get("metrics"),
                        "provenance": {"git_sha": prov.get("git_sha"),
                                       "data_hash": prov.get("data", {}).get("data_hash"),
                                       "seed": prov.get("seed"), "params": prov.get("params"),
                                       "libraries": p.manifest.get("libraries")},
                        "missing": rebuilds.missing_provenance(p.manifest)})
        for name, path in handed_over(cfg).items():
            out.append({"id": name, "kind": "notebook handover", "name": path.name,
                        "files": [path.name], "metrics": None, "provenance": None,
                        "missing": rebuilds.missing_provenance(None)})
        return out

    return json_response({"models": await asyncio.to_thread(read)})


@router.post("/models/{model_id}/rebuild", tags=["models"],
             responses={404: {}, 409: {"description": "missing provenance, or the code, the "
                                                      "environment or the data changed"}})
async def rebuild_model(model_id: ModelId, cfg: Settings, engine: Engine) -> Response:
    def work() -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            status, body = 200, do()
            outcome = "reproduced" if body["reproduced"] else "differs"
        except rebuilds.Refused as exc:
            status, outcome = exc.status, exc.error
            body = {"error": exc.error, "message": str(exc), "model": model_id, **exc.details}
        if status != 404:
            with engine.begin() as conn:
                conn.execute(REBUILDS.insert().values(
                    model=model_id, outcome=outcome, detail=body, ts=time.time(),
                    took_s=round(time.perf_counter() - started, 3)))
        return status, body

    def do() -> dict[str, Any]:
        if VERSION_RE.match(model_id):
            found = store(cfg).load(model_id)
            if found is not None:
                Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
                return rebuilds.rebuild(engine, found.folder, Path(cfg.work_dir))
        pickled = handed_over(cfg).get(model_id)
        if pickled is not None:
            beside = pickled.with_name(MANIFEST_FILE)
            manifest = json.loads(beside.read_text()) if beside.is_file() else None
            missing = rebuilds.missing_provenance(manifest)
            raise rebuilds.Refused(
                409, "missing_provenance", f"missing provenance: {pickled.name} was handed "
                "over alone, no " + ", ".join(missing) + ": nobody can rebuild it",
                missing=missing)
        known = [*store(cfg).versions(), *handed_over(cfg)]
        raise rebuilds.Refused(404, "model_not_found", f"no model {model_id!r} (known: "
                               f"{', '.join(known) or 'none'})")

    status, body = await asyncio.to_thread(work)
    if status != 200:
        extra = {k: v for k, v in body.items() if k not in ("error", "message", "model")}
        raise ApiError(status, body["message"], body["error"], [extra] if extra else None)
    return json_response(body)


@router.get("/rebuilds", tags=["models"])
async def list_rebuilds(engine: Engine, limit: Annotated[int, Query(ge=1, le=200)] = 20
                        ) -> Response:
    def read(conn: sa.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(sa.select(REBUILDS).order_by(REBUILDS.c.id.desc()).limit(limit))
        return [db.plain(r) for r in rows.mappings()]

    return json_response({"rebuilds": await db.in_tx(engine, read)})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    cfg = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI, state: ServiceState) -> AsyncIterator[Resources]:
        engine = db.make_engine(cfg.database_url)
        await asyncio.to_thread(dwh.create_tables, engine)
        await asyncio.to_thread(db.create_tables, engine, METADATA)
        state.metadata.update(repository=cfg.repo_dir, handover=cfg.handover_dir,
                              model=train.MODEL_NAME, name_pattern=NAME_RE.pattern)
        try:
            yield {"engine": engine}
        finally:
            engine.dispose()

    app = create_service(cfg, title="only-me: registry and rebuilds (TA1)", lifespan=lifespan)
    app.include_router(router)
    return app
