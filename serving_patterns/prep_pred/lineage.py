"""The `train_run_id` that ties the prep and pred stages of S5 to one training run.

The trainer writes the same id into both manifests. Each stage publishes its artifact's id on
`/metadata` (`train_run_id`) and in an `X-Train-Run-Id` header on every response, and the proxy
compares the two headers before it answers. A scaler and a classifier fitted in different runs
both run fine, yet together they mispredict.
"""

from __future__ import annotations

from typing import Any

from patternkit.models import ModelError
from patternkit.service import ServiceState

RUN_ID_HEADER = "x-train-run-id"


def publish_run_id(state: ServiceState, manifest: dict[str, Any]) -> str:
    """Put the artifact's `train_run_id` on /metadata and on every response (X-Train-Run-Id);
    an artifact without one is refused."""
    run_id = manifest.get("train_run_id")
    if not run_id:
        raise ModelError(f"the manifest of {manifest.get('name')!r} has no train_run_id")
    state.metadata["train_run_id"] = str(run_id)
    state.set_header(RUN_ID_HEADER, str(run_id))
    return str(run_id)
