"""The input contract of OA2's documented predictor: units, conversion to the model's unit, and
range checks against the model card.

A body names the unit of its measurements (`cm`, `mm`, `m` or `in`); rows are converted to
the card's unit (cm) before the model sees them, and every converted value outside the card's
range for its feature is an `OutOfRange` finding: the symptom of a silent unit change (inches
sent as centimetres) or a broken sensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CM_PER_UNIT = {"cm": 1.0, "mm": 0.1, "m": 100.0, "in": 2.54}


class UnknownUnit(ValueError):
    """A unit that is not in CM_PER_UNIT."""


@dataclass(frozen=True)
class FeatureRange:
    name: str
    low: float
    high: float


@dataclass(frozen=True)
class OutOfRange:
    row: int
    feature: str
    value: float  # in the card's unit
    low: float
    high: float

    def view(self) -> dict[str, Any]:
        return asdict(self)


def to_card_unit(X: np.ndarray, unit: str, card_unit: str = "cm") -> np.ndarray:
    """The rows `X`, measured in `unit`, converted to `card_unit`."""
    for u in (unit, card_unit):
        if u not in CM_PER_UNIT:
            raise UnknownUnit(f"unit {u!r} is not one of {', '.join(CM_PER_UNIT)}")
    if unit == card_unit:
        return X
    factor = CM_PER_UNIT[unit] / CM_PER_UNIT[card_unit]
    return (X.astype(np.float64) * factor).astype(np.float32)


def ranges_of(card: dict[str, Any]) -> list[FeatureRange]:
    return [FeatureRange(f["name"], float(f["min"]), float(f["max"]))
            for f in card["input"]["features"]]


def out_of_range(rows: np.ndarray, ranges: list[FeatureRange]) -> list[OutOfRange]:
    """Every value of `rows` outside its feature's range, row by row."""
    found = []
    lows = np.array([r.low for r in ranges], dtype=np.float32)
    highs = np.array([r.high for r in ranges], dtype=np.float32)
    for i, j in zip(*np.nonzero((rows < lows) | (rows > highs)), strict=True):
        r = ranges[int(j)]
        found.append(OutOfRange(int(i), r.name, round(float(rows[i, j]), 4), r.low, r.high))
    return found
