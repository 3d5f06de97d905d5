"""One JSON error shape for every 4xx/5xx: `{"error", "message", "details", "request_id"}`.

`ApiError` is what routes raise; `install_error_handlers` maps FastAPI's and Starlette's own
errors onto the same shape. An unexpected exception is not handled here: the service
middleware turns it into the 500 (so that it carries the request id and identity headers).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

STATUS_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """Raise anywhere in a request to answer with the uniform JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        error: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error or STATUS_ERRORS.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class BodyTooLarge(StarletteHTTPException):
    """The 413 of a body past MAX_BODY_BYTES.

    An HTTPException, not an ApiError: FastAPI re-raises those from its body parsing, where
    any other exception raised while reading the body becomes a 400.
    """

    def __init__(self, limit: int, size: int | None = None) -> None:
        seen = f"{size} bytes" if size is not None else "more"
        super().__init__(
            413, f"request body of {seen} exceeds the limit of {limit} bytes (MAX_BODY_BYTES)"
        )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    error: str | None = None,
    details: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "error": error or STATUS_ERRORS.get(status, "error"),
        "message": message,
        "details": details or [],
        "request_id": request_id,
    }
    return json_response(body, status, headers)


def request_id(request: Request) -> str | None:
    """The id the middleware gave this request (taken from X-Request-ID or generated)."""
    rid = request.scope.get("patternkit.request_id")
    return str(rid) if rid else None


def install_error_handlers(app: FastAPI) -> None:
    """ApiError, validation errors and HTTP exceptions all leave in the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(
            exc.status, exc.message, exc.error, exc.details, request_id(request), exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": "body", "msg": "invalid request"}
        message = f"{first['loc']}: {first['msg']}" if first["loc"] else first["msg"]
        return error_response(422, message, "validation_error", details, request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(
            exc.status_code, str(exc.detail), request_id=request_id(request),
            headers=dict(exc.headers or {}),
        )


def validation_error(exc: ValidationError, prefix: str = "body") -> RequestValidationError:
    """Turn a pydantic ValidationError (e.g. from model_validate_json) into FastAPI's 422."""
    errors = []
    for e in exc.errors(include_url=False):
        loc = (prefix, *e["loc"]) if e["type"] != "json_invalid" else (prefix,)
        errors.append({**e, "loc": loc})
    return RequestValidationError(errors)
