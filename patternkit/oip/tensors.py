"""Tensors in and out: a loaded ONNX model as the protocol describes it, and its FP32 input.

`describe(model)` reads a model's inputs and outputs (names, datatypes, shapes: -1 for a
batch dimension) from its graph once; `ModelView.features` validates a request's input
tensor (datatype, shape against the model's, data count, numbers only, finite) and returns
it as the float32 rows the model runs on. Every refusal is an `InferenceError` naming it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from patternkit.models import OnnxArtifact
from patternkit.oip.schemas import PLATFORM, InferenceRequest, RequestInput

# ONNX element types and numpy dtypes -> the protocol's tensor datatypes
ONNX_DATATYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
    "tensor(int8)": "INT8", "tensor(uint64)": "UINT64", "tensor(uint32)": "UINT32",
    "tensor(uint16)": "UINT16", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_DATATYPES = {
    "float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64",
    "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint64": "UINT64", "uint32": "UINT32",
    "uint16": "UINT16", "uint8": "UINT8", "bool": "BOOL", "object": "BYTES",
}


class InferenceError(Exception):
    """Raise in a /v2 route to answer `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def validation_message(exc: ValidationError) -> str:
    """The first problem of a request body, e.g. `inputs.0.shape.1: Input should be ...`."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return "the body is not valid JSON: " + first["msg"].removeprefix("Invalid JSON: ")
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else f"the body: {first['msg']}"


def tensor_spec(arg: Any) -> dict[str, Any]:
    """An ONNX graph input or output as a protocol metadata tensor."""
    shape = [d if isinstance(d, int) else -1 for d in (arg.shape or [])]
    return {"name": arg.name, "datatype": ONNX_DATATYPES.get(arg.type, arg.type), "shape": shape}


@dataclass(frozen=True)
class ModelView:
    """One loaded model's protocol metadata and output names, read once from its graph."""

    model: OnnxArtifact
    metadata: dict[str, Any]
    outputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.model.name

    def check(self, name: str, version: str | None) -> None:
        """404 unless the URL names this model (and, if given, its version)."""
        if name != self.model.name:
            raise InferenceError(
                404, f"unknown model {name!r}: this server serves {self.model.name!r}")
        if version is not None and version != self.model.version:
            raise InferenceError(404, f"model {name!r} has no version {version!r}: it has "
                                      f"{self.model.version!r}")

    def requested(self, req: InferenceRequest) -> list[str]:
        """The outputs to return, in the order asked (all of them when none are named)."""
        if not req.outputs:
            return list(self.outputs)
        names: list[str] = []
        for out in req.outputs:
            if out.name not in self.outputs:
                raise InferenceError(400, f"unknown output {out.name!r}: model {self.name!r} "
                                          f"has {', '.join(map(repr, self.outputs))}")
            if out.name not in names:
                names.append(out.name)
        return names

    def features(self, req: InferenceRequest, max_rows: int) -> np.ndarray:
        """The one input tensor the model takes, as (rows, n_features) float32."""
        expected = self.model.input_name
        for given in req.inputs:
            if given.name != expected:
                raise InferenceError(400, f"unknown input {given.name!r}: model {self.name!r} "
                                          f"takes one input, {expected!r}")
        if len(req.inputs) > 1:
            raise InferenceError(400, f"input {expected!r} is given {len(req.inputs)} times")
        return fp32_rows(req.inputs[0], self.model.n_features, max_rows)


@functools.lru_cache(maxsize=8)
def describe(model: OnnxArtifact) -> ModelView:
    """The protocol's view of a loaded model (cached per model object)."""
    graph_outputs = model.session.get_outputs()
    metadata = {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [tensor_spec(i) for i in model.session.get_inputs()],
        "outputs": [tensor_spec(o) for o in graph_outputs],
    }
    return ModelView(model, metadata, tuple(o.name for o in graph_outputs))


def kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:60]


def flat_values(data: list[Any], depth: int, where: str) -> list[float]:
    """Row-major numbers from flat or nested `data` (nested at most `depth` deep): a bool, a
    string or anything else that is not a JSON number is a 400 naming its position."""
    out: list[float] = []

    def walk(items: list[Any], level: int, path: str) -> None:
        for i, value in enumerate(items):
            t = type(value)
            if t is float or t is int:
                out.append(value)
            elif t is list and level < depth:
                walk(value, level + 1, f"{path}.{i}")
            else:
                raise InferenceError(400, f"{where}: data{path}.{i} is {kind(value)}: FP32 "
                                          "data are JSON numbers, flat or nested as the shape")

    walk(data, 1, "")
    return out


def fp32_rows(given: RequestInput, n_features: int, max_rows: int) -> np.ndarray:
    """Validate one FP32 input tensor of shape [rows, n_features] and return its values."""
    where = f"input {given.name!r}"
    if given.datatype != "FP32":
        raise InferenceError(400, f"{where}: datatype {given.datatype!r} is not supported: the "
                                  "model takes FP32")
    if len(given.shape) != 2 or given.shape[1] != n_features:
        raise InferenceError(400, f"{where}: shape {given.shape} does not match the model's "
                                  f"[-1, {n_features}] (rows of {n_features} features)")
    rows = given.shape[0]
    if rows == 0:
        raise InferenceError(400, f"{where}: shape {given.shape} holds no rows")
    if rows > max_rows:
        raise InferenceError(413, f"{where}: batch of {rows} rows exceeds the limit of "
                                  f"{max_rows} (MAX_BATCH_ROWS)")
    if given.data is None:
        if given.parameters and "binary_data_size" in given.parameters:
            raise InferenceError(400, f"{where}: binary tensor data is not supported: send the "
                                      "values as JSON `data` (tritonclient: "
                                      "set_data_from_numpy(x, binary_data=False))")
        raise InferenceError(400, f"{where}: no `data`")
    values = flat_values(given.data, len(given.shape), where)
    if len(values) != rows * n_features:
        raise InferenceError(400, f"{where}: shape {given.shape} holds {rows * n_features} "
                                  f"values, data has {len(values)}")
    try:
        with np.errstate(over="ignore"):  # past the FP32 range: inf, refused just below
            X = np.asarray(values, dtype=np.float32).reshape(rows, n_features)
    except OverflowError:  # an integer past even float64
        X = np.full((rows, n_features), np.inf, dtype=np.float32)
    if not np.isfinite(X).all():
        raise InferenceError(400, f"{where}: every value must be a finite FP32 number "
                                  "(|x| < 3.4e38)")
    return X


def parse_request(body: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InferenceError(400, validation_message(exc)) from None


def output_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(value.shape),
            "datatype": NUMPY_DATATYPES.get(value.dtype.name, value.dtype.name.upper()),
            "data": value.reshape(-1)}
