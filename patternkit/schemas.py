"""The request and response bodies every predictor speaks.

`{"data": [[f1, f2, f3, f4], ...], "request_id"?}` in, labels and probabilities out. Features
must be finite JSON numbers: booleans, numeric strings, NaN and infinity are refused by the
schema, row width and batch size by the predictor, which knows its model's input schema.
Row ids (`RowId` in a body, `RowIdPath` in a URL) are non-negative and fit a signed 64-bit
database column, so an id no table can hold is a 422, never an overflow.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, Strict

# strict: a JSON int is still a float, but true/false and "1.5" are not
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Row = Annotated[list[FiniteFloat], Field(min_length=1)]

MAX_ROW_ID = 2**63 - 1  # the largest BIGINT / SQLite INTEGER
RowId = Annotated[int, Field(strict=True, ge=0, le=MAX_ROW_ID)]
"""A row id in a JSON body: an integer (not a bool, float or string) from 0 to 2**63 - 1."""
RowIdPath = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="the row's id")]
"""The same range for a path parameter (`/rows/{row_id}`), which arrives as text."""


IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
"""The example row of the docs ("Try it out") and of `make run`: the first iris sample."""
PREDICT_EXAMPLE: dict[str, Any] = {"data": [IRIS_ROW]}


def predict_example(n_features: int | None) -> dict[str, Any]:
    """The docs' request example for a model taking `n_features` values a row: the iris row,
    cut or padded with zeros (a valid request, so "Try it out" gets a 200 from any model)."""
    if n_features is None or n_features == len(IRIS_ROW):
        return PREDICT_EXAMPLE
    return {"data": [(IRIS_ROW + [0.0] * n_features)[:n_features]]}
PREDICTION_EXAMPLE: dict[str, Any] = {
    "prediction": [0],
    "probabilities": [[0.978716, 0.021283142, 8.2392006e-07]],
    "model": "iris_lr",
    "version": "1.0.0",
    "served_by": "predictor-1",
    "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
}
"""What a predictor answers to PREDICT_EXAMPLE (the documented response example)."""


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PREDICT_EXAMPLE]})

    data: list[Row] = Field(..., min_length=1, description="rows of feature values")
    request_id: str | None = Field(None, max_length=128)


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PREDICTION_EXAMPLE]})

    prediction: list[int]
    probabilities: list[list[float]]
    model: str
    version: str
    served_by: str
    request_id: str | None = None


PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": PredictRequest.model_json_schema(),
            "example": PREDICT_EXAMPLE,  # what Swagger UI's "Try it out" sends
        }},
    },
}
"""`openapi_extra` for an endpoint that reads a PredictRequest body itself."""


def passthrough_responses(deadline: str = "TIMEOUT_MS") -> dict[int | str, dict[str, Any]]:
    """The `responses` of a proxy's `/predict` that passes one predictor's reply through:
    its 200, the body checks (413, 422), and the predictor's failures (502, 503, and 504
    after `deadline`)."""
    return {200: {"description": "the predictor's reply, passed through",
                  "model": PredictResponse},
            413: {"description": "body or batch too large"}, 422: {},
            502: {"description": "the predictor failed; the message names it"},
            503: {"description": "the predictor's model is not known yet"},
            504: {"description": f"the predictor missed {deadline}"}}


def with_examples(
    openapi_extra: dict[str, Any] | None = None,
    *,
    request: Any = None,
    response: Any = None,
    status: int = 200,
) -> dict[str, Any]:
    """`openapi_extra` (PREDICT_OPENAPI by default) plus a request and a response example.

    FastAPI merges `openapi_extra` into the generated operation, so this adds the examples
    without replacing a body schema or a response's description: e.g.
    `openapi_extra=with_examples(response={"job_id": "...", "status": "pending"}, status=202)`.
    """
    base = PREDICT_OPENAPI if openapi_extra is None else openapi_extra
    extra: dict[str, Any] = {**base}
    if request is not None:
        body = {**extra.get("requestBody", {})}
        content = {**body.get("content", {})}
        content["application/json"] = {**content.get("application/json", {}), "example": request}
        extra["requestBody"] = {**body, "content": content}
    if response is not None:
        extra["responses"] = {str(status): {"content": {"application/json": {"example": response}}}}
    return extra


class ErrorBody(BaseModel):
    error: str = Field(..., description="machine-readable error code")
    message: str = Field(..., description="what was wrong, for a human")
    details: list[dict[str, Any]] = Field(default_factory=list)
    request_id: str | None = None
