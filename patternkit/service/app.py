"""`create_service`: the FastAPI app every HTTP process is built from, and its typed state.

A pattern's lifespan `(app, state)` opens what its routes need and yields it as a mapping
(a TypedDict): Starlette's lifespan state, which every request sees as `request.state.<name>`
(read it in a FastAPI route through an `Annotated[..., Depends(from_state("name"))]`).
Backend clients passed as `upstreams` are put there too and closed at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request

from patternkit.service.docs import install_docs
from patternkit.service.errors import install_error_handlers
from patternkit.service.middleware import ServiceMiddleware
from patternkit.service.routes import install_openapi, install_ops_routes, ops_routes_last
from patternkit.service.state import ServiceState
from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.service")

Lifespan = Callable[
    [FastAPI, ServiceState], AbstractAsyncContextManager[Mapping[str, object] | None]
]


class Closable(Protocol):
    async def aclose(self) -> None: ...


def from_state(name: str) -> Callable[[Request], Coroutine[Any, Any, Any]]:
    """A FastAPI dependency reading `request.state.<name>` (async: no thread hop)."""

    async def dependency(request: Request) -> Any:
        return getattr(request.state, name)

    return dependency


ServiceDep = Annotated[ServiceState, Depends(from_state("service"))]


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `coro` as a task for the life of the block (a lifespan), cancelled at its end."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def create_service(
    settings: ServiceSettings,
    *,
    title: str | None = None,
    lifespan: Lifespan | None = None,
    upstreams: Mapping[str, Closable] | None = None,
    version: str = "0.1.0",
    auto_ready: bool = True,
) -> FastAPI:
    """A FastAPI app with the scaffold installed; `lifespan` opens what the service needs.

    What `lifespan` yields, `upstreams` (e.g. `{"predictor": Upstream(timeout_s)}`, closed at
    shutdown), the `ServiceState` (as `service`) and the settings (as `settings`) are the
    lifespan state routes read, so a route can be a module-level function.
    The service turns ready once `lifespan` has entered, or, with `auto_ready=False`, when the
    service sets `state.ready = True` itself (e.g. after a model loads in the background, so
    that `/health` answers while `/ready` is still 503). It turns unready at shutdown.
    """
    state = ServiceState(settings)
    clients = dict(upstreams or {})

    @asynccontextmanager
    async def scaffold_lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        ops_routes_last(app)
        shared: dict[str, object] = {"service": state, "settings": settings, **clients}
        try:
            if lifespan is None:
                state.ready = True
                log.info("%s ready", state.served_by)
                yield shared
            else:
                async with lifespan(app, state) as resources:
                    if auto_ready:
                        state.ready = True
                    log.info("%s started (ready=%s)", state.served_by, state.ready)
                    yield {**shared, **(resources or {})}
            state.ready = False
            log.info("%s shutting down", state.served_by)
        finally:
            for client in clients.values():
                await client.aclose()

    app = FastAPI(title=title or settings.service_name, version=version, lifespan=scaffold_lifespan,
                  docs_url=None, redoc_url=None)  # install_docs serves them without a CDN
    app.state.service = state
    app.state.doc_routes = []
    install_openapi(app)
    install_docs(app)
    install_error_handlers(app)
    install_ops_routes(app, state)
    app.add_middleware(ServiceMiddleware, state=state)
    return app
