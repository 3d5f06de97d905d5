"""The Open Inference Protocol's JSON objects, as pydantic models with the docs' examples.

Requests (`InferenceRequest`: inputs with name, shape, datatype, data), replies (metadata,
health, `InferenceResponse`) and the error object `{"error": message}`, named as the KServe
spec names them. The examples are the iris row, as on every `/predict` route.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from patternkit.schemas import IRIS_ROW

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX model run by ONNX Runtime
SERVER_NAME = "patternkit"

Parameters = dict[str, Any]
Dim = Annotated[int, Field(strict=True, ge=0)]

INFER_EXAMPLE: dict[str, Any] = {
    "id": "42",
    "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}],
}
"""The docs' infer request (what "Try it out" sends): the KServe example, for the iris row."""
INFER_REPLY_EXAMPLE: dict[str, Any] = {
    "model_name": "iris_lr",
    "model_version": "1.0.0",
    "id": "42",
    "outputs": [
        {"name": "label", "shape": [1], "datatype": "INT64", "data": [0]},
        {"name": "probabilities", "shape": [1, 3], "datatype": "FP32",
         "data": [0.978716, 0.021283142, 8.2392006e-07]},
    ],
}
MODEL_EXAMPLE: dict[str, Any] = {
    "name": "iris_lr",
    "versions": ["1.0.0"],
    "platform": PLATFORM,
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
}


class InferenceErrorBody(BaseModel):
    """The protocol's error object: every 4xx/5xx under /v2."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "input 'X': shape [1, 3] does not match the model's [-1, 4]"}]})

    error: str = Field(..., description="what was wrong, for a human")


class ServerMetadataResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": SERVER_NAME, "version": "0.1.0", "extensions": []}]})

    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(..., description="-1 for a dimension of any size")


class ModelMetadataResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [MODEL_EXAMPLE]})

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[Dim]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [INFER_EXAMPLE]})

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(..., min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="default: every output")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [INFER_REPLY_EXAMPLE]})

    model_name: str
    model_version: str | None = None
    id: str
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]
