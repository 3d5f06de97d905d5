"""Topologies: the schema of `topology.toml`, the local runner, the compose and k8s renderers.

`discover()` lists every pattern folder of the catalogue (a folder holding a topology.toml
under one of the category folders).
"""

from __future__ import annotations

from pathlib import Path

from patternkit.topology.compose import render_compose, render_file
from patternkit.topology.k8s import render_k8s, render_k8s_file
from patternkit.topology.runner import Stack, StackError, project_root
from patternkit.topology.schema import (
    TOPOLOGY_FILE,
    Topology,
    TopologyError,
    load_topology,
)

CATEGORY_DIRS = (
    "serving_patterns",
    "qa_patterns",
    "training_patterns",
    "operation_patterns",
    "lifecycle_patterns",
    "antipatterns",
)


def repo_root() -> Path:
    return project_root(Path(__file__).resolve().parent)


def discover(root: Path | None = None) -> list[Path]:
    """Every pattern folder (holding a topology.toml), sorted by category then name."""
    base = root or repo_root()
    found: list[Path] = []
    for category in CATEGORY_DIRS:
        found.extend(sorted(p.parent for p in (base / category).glob(f"*/{TOPOLOGY_FILE}")))
    return found


def find_pattern(name: str, root: Path | None = None) -> Path:
    """A pattern folder from `serving_patterns/web_single`, `web_single` or a path."""
    base = root or repo_root()
    candidate = Path(name)
    for path in (candidate, base / candidate):
        if (path / TOPOLOGY_FILE).is_file():
            return path.resolve()
    matches = [p for p in discover(base) if p.name == candidate.name]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{p.parent.name}/{p.name}" for p in discover(base))
    raise TopologyError(f"no pattern {name!r}; known: {known}")


__all__ = [
    "CATEGORY_DIRS",
    "Stack",
    "StackError",
    "Topology",
    "TopologyError",
    "discover",
    "find_pattern",
    "load_topology",
    "render_compose",
    "render_file",
    "render_k8s",
    "render_k8s_file",
    "repo_root",
]
