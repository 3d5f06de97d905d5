"""`GET /debug/modules` for both servers of TA2: what a running server has imported.

It lists the top-level packages in `sys.modules` that are not the standard library, maps them
to the installed distributions they come from (`importlib.metadata.packages_distributions`)
and sums each distribution's installed size from its RECORD: the server's dependency closure,
the stand-in here for the size of the image it needs. `TRAINING_STACK` are the packages only
training needs; a serving process should have none of them.
"""

from __future__ import annotations

import sys
from importlib.metadata import Distribution, distribution, packages_distributions
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

TRAINING_STACK = ("sklearn", "skl2onnx", "pandas", "scipy", "onnx", "joblib")


class DistributionSize(BaseModel):
    version: str
    bytes: int


class ModulesReply(BaseModel):
    """What this process imported, where it came from, and how much of the disk that is."""

    modules: list[str]
    training_stack: list[str]
    distributions: dict[str, DistributionSize]
    closure_bytes: int
    n_modules: int


def installed_bytes(dist: Distribution) -> int:
    """A distribution's installed size: its RECORD's sizes (a file without one is stat'ed)."""
    total = 0
    for file in dist.files or []:
        if file.size is not None:
            total += file.size
            continue
        try:
            total += Path(str(dist.locate_file(file))).stat().st_size
        except OSError:
            continue
    return total


def imported_packages() -> list[str]:
    """Top-level packages this process has imported, without the standard library."""
    names = {name.partition(".")[0] for name in list(sys.modules)}
    return sorted(n for n in names
                  if n not in sys.stdlib_module_names and not n.startswith("_"))


def modules_report() -> dict[str, Any]:
    packages = imported_packages()
    owners = packages_distributions()
    dists: dict[str, DistributionSize] = {}
    for name in sorted({d for p in packages for d in owners.get(p, [])}):
        dist = distribution(name)
        dists[dist.metadata["Name"]] = DistributionSize(
            version=dist.version, bytes=installed_bytes(dist))
    return {
        "modules": packages,
        "training_stack": [p for p in TRAINING_STACK if p in packages],
        "distributions": dists,
        "closure_bytes": sum(d.bytes for d in dists.values()),
        "n_modules": len(sys.modules),
    }


def add_modules_route(app: FastAPI) -> None:
    """`GET /debug/modules` (read-only; a production server would guard or drop it)."""

    def debug_modules() -> ModulesReply:
        """The packages this process imported and the installed size of their distributions."""
        return ModulesReply(**modules_report())

    app.get("/debug/modules", tags=["debug"], response_model=ModulesReply)(debug_modules)
