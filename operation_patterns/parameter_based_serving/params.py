"""The parameters of O6: what an operator may change while the proxy runs, validated as one.

`ServingParams` is the switch: `active_model` (which backend answers), `activate` (off: every
request gets the disabled default and no backend is called), `retry` and `timeout_second`
(attempts, and the time budget of a request for all of them), `thresholds` (per model: a top
probability below it answers "unknown") and `allow_labels` (the labels that may be answered).
Its validators check names against what the proxy knows (the validation context: `backends`,
and `labels` once the models have said theirs), so a bad value is refused with the field
named. `label_rows` applies the threshold and the allow-list to a model's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

UNKNOWN = "unknown"
DISABLED = "disabled"
REASONS = ("below_threshold", "not_allowed")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _known(info: ValidationInfo, key: str) -> list[str] | None:
    """The names the context holds at `key` (a list, or a function giving one), if any."""
    names = (info.context or {}).get(key)
    if callable(names):
        names = names()
    return list(names) if names else None


class ServingParams(BaseModel):
    """The proxy's runtime parameters (env at start; `PUT /config` or the config file after)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    active_model: str = Field(
        "model_a", min_length=1, description="the backend that answers, a name in BACKENDS"
    )
    activate: bool = Field(
        True, description="false: every request gets the disabled default, no backend call"
    )
    retry: int = Field(3, ge=1, le=10, description="attempts per request (1: no retry)")
    timeout_second: float = Field(
        2.0, gt=0, le=60, description="the time budget of a request, all attempts included"
    )
    thresholds: Annotated[dict[str, Probability], NoDecode] = Field(
        default_factory=dict,
        description="per model: a top probability below it answers unknown (absent: 0)",
    )
    allow_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="the labels that may be answered, others answer unknown (empty: all)",
    )

    @field_validator("allow_labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):  # ALLOW_LABELS=setosa,versicolor
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("thresholds", mode="before")
    @classmethod
    def _split_thresholds(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        out: dict[str, str] = {}  # THRESHOLDS=model_a=0.6,model_b=0.8
        for item in (part.strip() for part in value.split(",")):
            name, eq, number = item.partition("=")
            if item and (not eq or not name.strip()):
                raise ValueError(f"{item!r} is not name=probability")
            if item:
                out[name.strip()] = number.strip()
        return out

    @field_validator("active_model")
    @classmethod
    def _active_is_a_backend(cls, value: str, info: ValidationInfo) -> str:
        names = _known(info, "backends")
        if names is not None and value not in names:
            raise ValueError(f"no backend named {value!r}; backends: {', '.join(names)}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds_name_backends(cls, value: dict[str, float], info: ValidationInfo
                                  ) -> dict[str, float]:
        names = _known(info, "backends")
        unknown = sorted(set(value) - set(names or value))
        if unknown:
            raise ValueError(f"no backend named {', '.join(unknown)}; "
                             f"backends: {', '.join(names or [])}")
        return value

    @field_validator("allow_labels")
    @classmethod
    def _labels_exist(cls, value: list[str], info: ValidationInfo) -> list[str]:
        labels = _known(info, "labels")
        unknown = sorted(set(value) - set(labels or value))
        if unknown:
            raise ValueError(f"no model answers {', '.join(unknown)}; "
                             f"labels: {', '.join(labels or [])}")
        return value

    def threshold(self, model: str) -> float:
        return self.thresholds.get(model, 0.0)


def label_rows(
    prediction: Sequence[int], probabilities: Sequence[Sequence[float]],
    classes: Sequence[str], threshold: float, allow: Sequence[str],
) -> tuple[list[int | None], list[str], list[str | None]]:
    """Per row: the class index (None when unknown), its label or "unknown", and why
    (`below_threshold`: the top probability is under the threshold; `not_allowed`: the
    label is not on a non-empty allow-list)."""
    indices: list[int | None] = []
    labels: list[str] = []
    reasons: list[str | None] = []
    for index, probs in zip(prediction, probabilities, strict=True):
        label = classes[index] if 0 <= index < len(classes) else str(index)
        reason = None
        if max(probs) < threshold:
            reason = "below_threshold"
        elif allow and label not in allow:
            reason = "not_allowed"
        indices.append(None if reason else index)
        labels.append(UNKNOWN if reason else label)
        reasons.append(reason)
    return indices, labels, reasons
