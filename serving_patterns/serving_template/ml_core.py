"""The ML core of S12's template: the request and response contract, generated from a config.

`contract` builds pydantic models with `pydantic.create_model` from the config's features, so
an iris server takes four named features and a wine server thirteen, each within its range.
`check_artifact` refuses a model whose manifest disagrees with the config, and `predict` turns
the model's class ids and probabilities into the labelled envelope every server returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from patternkit.models import OnnxModel
from serving_patterns.serving_template.config import FeatureSpec, ServingConfig

FORBID = ConfigDict(extra="forbid")


def feature_field(spec: FeatureSpec) -> Any:
    """The pydantic field of one feature: a required, finite number within the config's range
    (strict: true/false and numeric strings are refused, JSON integers are numbers).

    The field is reached through an alias (the feature name), so a feature called `schema`
    or `copy` cannot shadow pydantic's own attributes.
    """
    what = spec.description or spec.name.replace("_", " ")
    unit = f" ({spec.unit})" if spec.unit else ""
    extra = {"unit": spec.unit} if spec.unit else None
    return (
        float,
        Field(..., alias=spec.name, strict=True, ge=spec.min, le=spec.max, allow_inf_nan=False,
              description=what + unit, json_schema_extra=extra),
    )


@dataclass(frozen=True)
class Contract:
    """The generated models: `request` validates a body, `response` documents the reply."""

    request: type[BaseModel]
    response: type[BaseModel]
    features: tuple[str, ...]

    def rows(self, body: BaseModel) -> np.ndarray:
        """The validated instances as the model's input matrix, columns in config order."""
        instances: list[BaseModel] = body.instances  # type: ignore[attr-defined]
        return np.array(
            [[getattr(inst, name) for name in self.features] for inst in instances],
            dtype=np.float32,
        )


def example_instance(config: ServingConfig) -> dict[str, float]:
    """The config's `example`, or each feature at mid-range (0 where it has no range)."""
    if config.example is not None:
        return dict(config.example)
    out = {}
    for spec in config.features:
        low, high = spec.min, spec.max
        middle = (low + high) / 2 if low is not None and high is not None else low or high or 0.0
        out[spec.name] = round(middle, 3)
    return out


def examples(config: ServingConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The documented request and reply: one instance, and the envelope it comes back in."""
    share = round(1 / len(config.classes), 6)
    request = {"instances": [example_instance(config)]}
    reply = {
        "model": config.model.name, "version": config.model.version,
        "predictions": [{"label": config.classes[0], "class_id": 0,
                         "probabilities": {label: share for label in config.classes}}],
        "served_by": config.model.name, "request_id": "0b6e9f3ab82073adfe152a76bb41a4e9",
        "template_version": "2.0.0",
    }
    return request, reply


def contract(config: ServingConfig) -> Contract:
    """Generate the request/response models of a config; the names are the same on every server.

    Both carry an example (`examples`), which /docs shows and "Try it out" sends; a config
    whose `example` does not fit its own features fails here, at start-up.
    """
    fields = {f"f{i}": feature_field(spec) for i, spec in enumerate(config.features)}
    instance = create_model("Instance", __config__=FORBID, **fields)
    limit = config.limits.max_batch_rows
    request_example, reply_example = examples(config)
    request = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [request_example]}),
        instances=(list[instance], Field(  # type: ignore[valid-type]
            ..., min_length=1, json_schema_extra={"maxItems": limit},
            description=f"1 to {limit} instances; more get 413",
        )),
        request_id=(str | None, Field(None, max_length=128)),
    )
    label = Literal[tuple(config.classes)]  # type: ignore[valid-type]
    prediction = create_model(
        "Prediction",
        label=(label, ...),
        class_id=(int, ...),
        probabilities=(dict[str, float], Field(..., description="per class label")),
    )
    response = create_model(
        "PredictResponse",
        __config__=ConfigDict(json_schema_extra={"examples": [reply_example]}),
        model=(str, ...),
        version=(str, ...),
        predictions=(list[prediction], ...),  # type: ignore[valid-type]
        served_by=(str, ...),
        request_id=(str | None, None),
        template_version=(str, ...),
    )
    try:
        request.model_validate(request_example)
    except ValueError as exc:
        raise ValueError(f"the config's example is not a valid instance: {exc}") from None
    return Contract(request=request, response=response, features=tuple(fields))


def check_artifact(config: ServingConfig, model: OnnxModel) -> None:
    """Raise ValueError when the model on disk is not the one the config describes."""
    manifest = model.manifest
    problems = []
    if model.name != config.model.name:
        problems.append(f"model.name is {config.model.name!r}, the artifact is {model.name!r}")
    if model.version != config.model.version:
        problems.append(
            f"model.version is {config.model.version!r}, the artifact is {model.version!r}"
        )
    if model.n_features != len(config.features):
        problems.append(
            f"{len(config.features)} features configured, the model takes {model.n_features}"
        )
    else:
        columns = manifest.get("input_schema", {}).get("features", [])
        for i, spec in enumerate(config.features):
            if spec.source is not None and i < len(columns) and columns[i] != spec.source:
                problems.append(
                    f"feature {i} ({spec.name}) has source {spec.source!r}, "
                    f"the model's column {i} is {columns[i]!r}"
                )
    n_classes = len(manifest.get("classes", config.classes))
    if n_classes != len(config.classes):
        problems.append(f"{len(config.classes)} classes configured, the model has {n_classes}")
    if problems:
        raise ValueError(f"config and model {model.path} disagree: " + "; ".join(problems))


def predict(config: ServingConfig, model: OnnxModel, X: np.ndarray) -> list[dict[str, Any]]:
    """One labelled prediction per row: label, class id and a probability per class label."""
    out = model.predict(X)
    classes = config.classes
    return [
        {
            "label": classes[int(class_id)],
            "class_id": int(class_id),
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)},
        }
        for class_id, row in zip(out.labels, out.probabilities, strict=True)
    ]
