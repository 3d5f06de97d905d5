"""Counts a pipeline module's data-access code paths from its source (`ast`), not by hand.

A path is a function of the module that talks to a store itself (calls a driver: sqlite3,
urllib, httpx, open, csv), or an entry point of the shared data-access module that the
module calls. The tangled module has one per store; the clean one calls one entry point.
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType
from typing import Any

DRIVERS = frozenset({"sqlite3.connect", "urllib.request.urlopen", "httpx.get", "httpx.Client",
                     "open", "csv.reader", "csv.DictReader"})
SHARED = "antipatterns.too_many_pipes.datasource"


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def data_access_paths(module: ModuleType) -> dict[str, Any]:
    tree = ast.parse(inspect.getsource(module))
    shared = {alias.asname or alias.name for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module == SHARED
              for alias in node.names}
    own, via = [], set()
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        calls = [dotted(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)]
        drivers = sorted({c for c in calls if c in DRIVERS})
        if drivers:
            own.append({"function": fn.name, "drivers": drivers})
        via |= {f"datasource.{c}" for c in calls if c in shared}
    paths = [p["function"] for p in own] + sorted(via)
    return {"module": module.__name__, "paths": paths, "count": len(paths), "own": own}
