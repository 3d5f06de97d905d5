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
PREDICTION_EXAMPLE: dict[str, Any] = {
    "prediction": [0],
    "probabilities": [[0.979, 0.021, 0.0]],
    "model": "iris_lr",
    "version": "2f1c0d9a6b7e",
    "served_by": "predictor-1",
    "request_id": "5d0c8f1e2b3a4c6d",
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


def response_example(example: Any, description: str = "Successful Response") -> dict[str, Any]:
    """A `responses` entry showing `example` as the JSON reply (for routes that return a
    Response themselves and so have no response_model to show)."""
    return {"description": description, "content": {"application/json": {"example": example}}}


class ErrorBody(BaseModel):
    error: str = Field(..., description="machine-readable error code")
    message: str = Field(..., description="what was wrong, for a human")
    details: list[dict[str, Any]] = Field(default_factory=list)
    request_id: str | None = None
