"""Preprocessing artifacts: a fitted scikit-learn transformer exported to ONNX on its own.

The counterpart of `patternkit.models` for a stage that transforms features instead of
classifying them (e.g. the StandardScaler of a prep-pred split). `write_transform_artifact`
(training side, imports skl2onnx) writes `model.onnx` + `manifest.json`; `OnnxTransform`
(serving side, onnxruntime only) verifies the sha256 and returns the transformed matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from patternkit.models import OnnxArtifact, write_artifact


def write_transform_artifact(
    transformer: Any,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    features: list[str],
    outputs: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a fitted transformer to `out_dir/model.onnx` and write its manifest."""
    schema = {"n_features": len(outputs), "features": outputs, "dtype": "float32"}
    return write_artifact(
        transformer, out_dir, name=name, version=version, features=features,
        extra={"kind": "transform", "output_schema": schema, **(extra or {})},
        classifier=False,
    )


class OnnxTransform(OnnxArtifact):
    """A transformer: `transform` gives the transformed matrix."""

    @property
    def n_outputs(self) -> int:
        return int(self.manifest["output_schema"]["n_features"])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The transformed rows, (n, n_outputs) float32."""
        out: np.ndarray = self.session.run(None, {self.input_name: X})[0]
        return out
