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


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[Row] = Field(..., min_length=1, description="rows of feature values")
    request_id: str | None = Field(None, max_length=128)


class PredictResponse(BaseModel):
    prediction: list[int]
    probabilities: list[list[float]]
    model: str
    version: str
    served_by: str
    request_id: str | None = None


PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
}
"""`openapi_extra` for an endpoint that reads a PredictRequest body itself."""


class ErrorBody(BaseModel):
    error: str = Field(..., description="machine-readable error code")
    message: str = Field(..., description="what was wrong, for a human")
    details: list[dict[str, Any]] = Field(default_factory=list)
    request_id: str | None = None
