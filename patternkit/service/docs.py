"""The service's own API docs: Swagger UI and ReDoc served offline, and a complete OpenAPI.

FastAPI's default `/docs` and `/redoc` pages load their scripts from a CDN, so on a machine
without internet they are blank. Here every service serves the assets itself, from the
`fastapi-offline` wheel (FastAPI's "self-hosting JavaScript and CSS for docs" recipe:
`get_swagger_ui_html(swagger_js_url=..., swagger_css_url=...)`). `complete_openapi` then
gives every 4xx/5xx response the one error shape (`ErrorBody`, unless the route declared a
protocol's own, as the Open Inference Protocol's routes do), every operation that takes a
body the 413 and 422 the scaffold answers, and every operation the 500 it may.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, Response

from patternkit.schemas import ErrorBody
from patternkit.service.errors import ApiError

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
ASSETS = {  # file name -> media type; all of them ship in the fastapi-offline wheel
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
DOCS_PATHS = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL, f"{ASSETS_URL}/{{name}}"})
# no call to the online spec validator (Swagger UI's badge): nothing leaves the machine
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "tryItOutEnabled": True}

# the docs pages may load only from this service: a script or image that the bundles would
# fetch from elsewhere (ReDoc's logo is on a CDN) is blocked before it leaves the machine
CSP = ("default-src 'self'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
       "connect-src 'self'; frame-ancestors 'self'")
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
BODY_ERRORS = {
    "413": "request body or batch too large (MAX_BODY_BYTES, MAX_BATCH_ROWS)",
    "422": "the body is not valid; the message names the field",
}
INTERNAL_ERROR = "internal error: a bug (the message names the exception type)"
FASTAPI_DESCRIPTIONS = {"Additional Response", "Validation Error", ""}


def assets_dir() -> Path:
    """Where the Swagger UI and ReDoc files are (the `static` folder of fastapi_offline)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package (the docs' assets) is not installed")
    return Path(spec.origin).parent / "static"


def self_only(page: HTMLResponse) -> HTMLResponse:
    """`page` with a Content-Security-Policy allowing only this service (and its own inline
    scripts, by hash)."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
        for m in INLINE_SCRIPT.finditer(bytes(page.body))
    ]
    page.headers["content-security-policy"] = CSP.format(scripts=" ".join(hashes))
    return page


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc`, their scripts served from `/docs/assets/`."""
    folder = assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return self_only(get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        ))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return self_only(get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        ))

    @app.get(f"{ASSETS_URL}/{{name}}", include_in_schema=False)
    async def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise ApiError(404, f"no docs asset {name!r}; known: {', '.join(ASSETS)}")
        return FileResponse(folder / name, media_type=media_type,
                            headers={"cache-control": "public, max-age=86400"})


def complete_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Every error response in the one JSON shape, and the errors the scaffold itself answers.

    Each declared 4xx/5xx gets the `ErrorBody` schema (in place of FastAPI's
    `HTTPValidationError`, which this service never sends) unless the route named an error
    model of its own; an operation with a request body gets the 413 and 422 of the body limit
    and validation (no 422 where the route answers a bad body with its own 400); every
    operation the 500.
    """
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if "requestBody" in operation:
                for code, text in BODY_ERRORS.items():
                    if code != "422" or "400" not in responses:
                        responses.setdefault(code, {"description": text})
            responses.setdefault("500", {"description": INTERNAL_ERROR})
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    document_error(code, response)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    text = json.dumps(doc.get("paths"))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in text:
            schemas.pop(unused, None)
    return doc


def document_error(code: str, response: dict[str, Any]) -> None:
    """One error response: the ErrorBody schema (unless the route named its own error model),
    and a description if FastAPI gave none."""
    if response.get("description", "") in FASTAPI_DESCRIPTIONS:
        try:
            response["description"] = HTTPStatus(int(code)).phrase
        except ValueError:
            response["description"] = "error"
    content = response.setdefault("content", {})
    media = content.setdefault("application/json", {})
    ref = media.get("schema", {}).get("$ref", "")
    if not ref or ref.endswith("/HTTPValidationError"):
        media["schema"] = ERROR_REF


def request_example(doc: dict[str, Any], path: str, method: str = "post") -> Any:
    """The request body an operation documents: what "Try it out" fills in (the media type's
    `example`, else its first `examples` entry, else its schema's first `examples`)."""
    media = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
    if "example" in media:
        return media["example"]
    if media.get("examples"):
        return next(iter(media["examples"].values()))["value"]
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    examples = schema.get("examples") or []
    if not examples:
        raise KeyError(f"{method.upper()} {path} documents no request example")
    return examples[0]
