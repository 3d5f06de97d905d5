"""The Open Inference Protocol v2 (KServe, Triton, MLServer) beside the template's `/predict`.

The template predictor serves `GET /v2`, `/v2/health/{live,ready}`,
`/v2/models/{name}[/versions/{version}]` (metadata), `.../ready` and `POST .../infer` for its
ONNX model: FP32 input tensors given flat (row-major) or nested, outputs as Triton's ONNX
backend names them (`label` INT64, `probabilities` FP32), every error as the protocol's
`{"error": message}` (400 a bad tensor, 404 an unknown model or version, 413 past the limits,
503 while loading). Modules: `schemas` (the JSON objects), `tensors` (a model's signature, input
validation), `routes` (the predictor's routes and a proxy's pass-through).
"""

from patternkit.oip.routes import (
    PREFIX,
    ROUTES,
    OipRoute,
    add_oip_passthrough,
    add_oip_routes,
    error_reply,
    speaks_oip,
)
from patternkit.oip.schemas import (
    INFER_EXAMPLE,
    INFER_REPLY_EXAMPLE,
    MODEL_EXAMPLE,
    PLATFORM,
    InferenceErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
)
from patternkit.oip.tensors import InferenceError, ModelView, describe

__all__ = [
    "INFER_EXAMPLE",
    "INFER_REPLY_EXAMPLE",
    "MODEL_EXAMPLE",
    "PLATFORM",
    "PREFIX",
    "ROUTES",
    "InferenceError",
    "InferenceErrorBody",
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadataResponse",
    "ModelView",
    "OipRoute",
    "add_oip_passthrough",
    "add_oip_routes",
    "describe",
    "error_reply",
    "speaks_oip",
]
