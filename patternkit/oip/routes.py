"""The protocol's routes: on the template predictor, and passed through by a 1:1 proxy.

`add_oip_routes` serves the nine `/v2` operations for the model in a predictor's lifespan
slot; `add_oip_passthrough` gives a proxy the same documented paths, each forwarded as is to
the backend its `forward` picks. Both answer every error, theirs and the scaffold's (the body
limit, a bug), in the protocol's `{"error": message}` under `/v2`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from patternkit.faults import Faults, InjectedFault
from patternkit.models import OnnxArtifact
from patternkit.oip.schemas import (
    INFER_EXAMPLE,
    INFER_REPLY_EXAMPLE,
    SERVER_NAME,
    InferenceErrorBody,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadataResponse,
)
from patternkit.oip.tensors import InferenceError, ModelView, describe, output_tensor, parse_request
from patternkit.service import (
    ApiError,
    BodyTooLarge,
    Endpoint,
    ServiceState,
    add_fast_route,
    json_response,
    request_id,
)

if TYPE_CHECKING:  # a predictor never imports the proxy's HTTP client
    from patternkit.proxy import Reply

PREFIX = "/v2"
TAGS = ["open inference protocol v2"]


def error_reply(
    status: int, message: str, request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The protocol's error object (the request id travels in `X-Request-ID`)."""
    return json_response({"error": message}, status, headers)


def speaks_oip(endpoint: Endpoint) -> Endpoint:
    """`endpoint` with every error it meets answered in the protocol's shape: its own, the
    body limit on a body without Content-Length, and a proxy's 502/504 naming its backend."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except InferenceError as exc:
            return error_reply(exc.status, exc.message, headers=exc.headers)
        except ApiError as exc:
            return error_reply(exc.status, exc.message, headers=exc.headers)
        except BodyTooLarge as exc:
            return error_reply(413, str(exc.detail))

    return wrapped


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "a bad tensor or body: the message names it",
            404: "no such model or version here",
            413: "body past MAX_BODY_BYTES or batch past MAX_BATCH_ROWS",
            500: "an injected failure (FAIL_MODE) or a bug",
            502: "a proxy reached no backend", 503: "the model is not loaded yet",
            504: "a proxy's backend did not answer in time"}
    return {code: {"model": InferenceErrorBody, "description": text[code]} for code in codes}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its nested models written in place (an OpenAPI document has
    no `$defs` for a body declared by hand)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def path_parameters(path: str) -> list[dict[str, Any]]:
    params = []
    if "{name}" in path:
        params.append({"name": "name", "in": "path", "required": True, "example": "iris_lr",
                       "schema": {"type": "string"}, "description": "the model's name"})
    if "{version}" in path:
        params.append({"name": "version", "in": "path", "required": True, "example": "1.0.0",
                       "schema": {"type": "string"}, "description": "the model's version"})
    return params


@dataclass(frozen=True)
class OipRoute:
    name: str  # the handler's name (and the operation id's stem)
    method: str
    path: str
    summary: str
    response_model: type[BaseModel]
    errors: tuple[int, ...]

    def doc(self, proxied: bool = False) -> dict[str, Any]:
        """APIRoute arguments describing this route in /docs."""
        extra: dict[str, Any] = {}
        if params := path_parameters(self.path):
            extra["parameters"] = params
        if self.method == "POST":
            extra["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": inline_schema(InferenceRequest),
                "example": INFER_EXAMPLE,
            }}}
            extra["responses"] = {"200": {"content": {"application/json": {
                "example": INFER_REPLY_EXAMPLE}}}}
        errors = (*self.errors, 502, 504) if proxied else self.errors
        return {"tags": TAGS, "summary": self.summary, "response_model": self.response_model,
                "responses": error_docs(*errors, 500), "openapi_extra": extra}


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
ROUTES: tuple[OipRoute, ...] = (
    OipRoute("server_metadata", "GET", PREFIX, "server metadata", ServerMetadataResponse, ()),
    OipRoute("server_live", "GET", "/v2/health/live", "live", LiveResponse, ()),
    OipRoute("server_ready", "GET", "/v2/health/ready", "ready once the model is loaded",
             ReadyResponse, (503,)),
    OipRoute("model_metadata", "GET", MODEL, "model metadata: inputs and outputs",
             ModelMetadataResponse, (404, 503)),
    OipRoute("model_version_metadata", "GET", VERSION, "model metadata of a version",
             ModelMetadataResponse, (404, 503)),
    OipRoute("model_ready", "GET", f"{MODEL}/ready", "model ready", ModelReadyResponse,
             (404, 503)),
    OipRoute("model_version_ready", "GET", f"{VERSION}/ready", "model version ready",
             ModelReadyResponse, (404, 503)),
    OipRoute("model_infer", "POST", f"{MODEL}/infer", "inference with FP32 tensors",
             InferenceResponse, (400, 404, 413, 503)),
    OipRoute("model_version_infer", "POST", f"{VERSION}/infer", "inference with a version",
             InferenceResponse, (400, 404, 413, 503)),
)


def named(endpoint: Endpoint, name: str) -> Endpoint:
    """`endpoint` under another name (FastAPI derives the operation id from it)."""

    async def handler(request: Request) -> Response:
        return await endpoint(request)

    handler.__name__ = handler.__qualname__ = name
    return handler


class HasModel(Protocol):
    model: OnnxArtifact | None


def add_oip_routes(app: FastAPI, faults: Faults, max_rows: int, slot: str = "model") -> None:
    """Serve the protocol for the model in the lifespan state's `slot` (a `ModelSlot`)."""
    state: ServiceState = app.state.service
    state.error_shapes[PREFIX] = error_reply
    server = {"name": SERVER_NAME, "version": app.version, "extensions": []}

    def loaded(request: Request) -> ModelView:
        holder: HasModel = getattr(request.state, slot)
        if holder.model is None:
            raise InferenceError(503, f"{state.served_by} has no model loaded yet")
        view = describe(holder.model)
        view.check(request.path_params["name"], request.path_params.get("version"))
        return view

    async def server_metadata(request: Request) -> Response:
        return json_response(server)

    async def server_live(request: Request) -> Response:
        return json_response({"live": True})

    async def server_ready(request: Request) -> Response:
        if not state.ready:
            raise InferenceError(503, f"{state.served_by} is not ready: no model loaded yet")
        return json_response({"ready": True})

    async def model_metadata(request: Request) -> Response:
        return json_response(loaded(request).metadata)

    async def model_ready(request: Request) -> Response:
        view = loaded(request)
        if not state.ready:
            raise InferenceError(503, f"{state.served_by} is not ready")
        return json_response({"name": view.name, "ready": True})

    async def infer(request: Request) -> Response:
        view = loaded(request)
        if "inference-header-content-length" in request.headers:
            raise InferenceError(400, "binary tensor data is not supported: send the values as "
                                      "JSON `data` (tritonclient: binary_data=False)")
        req = parse_request(await request.body())
        X = view.features(req, max_rows)
        outputs = view.requested(req)
        try:
            await faults.apply()
        except InjectedFault as exc:
            raise InferenceError(500, str(exc)) from None
        model = view.model
        values = model.session.run(outputs, {model.input_name: X})
        return json_response({
            "model_name": model.name,
            "model_version": model.version,
            "id": req.id if req.id is not None else request_id(request),
            "outputs": [output_tensor(n, v) for n, v in zip(outputs, values, strict=True)],
        })

    handlers: dict[str, Endpoint] = {
        "server_metadata": server_metadata, "server_live": server_live,
        "server_ready": server_ready, "model_metadata": model_metadata,
        "model_version_metadata": model_metadata, "model_ready": model_ready,
        "model_version_ready": model_ready, "model_infer": infer, "model_version_infer": infer,
    }
    for route in ROUTES:
        endpoint = speaks_oip(named(handlers[route.name], route.name))
        add_fast_route(app, route.path, endpoint, [route.method], **route.doc())


Forward = Callable[[Request], Awaitable["Reply"]]


def add_oip_passthrough(app: FastAPI, forward: Forward) -> None:
    """Serve the protocol's paths on a proxy by forwarding each request as is (`forward`
    picks the backend); the proxy's own errors (no backend, a timeout) are protocol errors."""
    state: ServiceState = app.state.service
    state.error_shapes[PREFIX] = error_reply

    async def passthrough(request: Request) -> Response:
        reply = await forward(request)
        return reply.response()

    for route in ROUTES:
        endpoint = speaks_oip(named(passthrough, route.name))
        add_fast_route(app, route.path, endpoint, [route.method], **route.doc(proxied=True))
