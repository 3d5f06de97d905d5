"""Model aliases: a name such as `champion` that points at one version of one model.

MLflow's model version aliases: one alias names one version, setting it again moves it, and
a client asks for the alias instead of a pinned version. O3's registry keeps its aliases in
its tables and checks their names here (`check_alias`). The model repository
(`patternkit.model_repository`) keeps them in `aliases.json` beside a model's version
folders (`AliasFile`), with every version each alias pointed at before: moving one back to
the version before (a rollback, `AliasFile.back`) is then one call, no matter who remembers
what was deployed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patternkit.service import ApiError

ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_ALIAS = re.compile(r"^(latest|aliases|v\d+)$")  # MLflow reserves latest and v<n>
ALIASES_FILE = "aliases.json"
HISTORY_KEPT = 50  # versions an alias remembers it pointed at


def is_alias(name: str) -> bool:
    return bool(ALIAS_RE.match(name)) and not RESERVED_ALIAS.match(name)


def check_alias(alias: str) -> None:
    """A 422 `invalid_alias` naming the rule, unless `alias` is a usable alias name."""
    if not is_alias(alias):
        raise ApiError(422, f"alias {alias!r}: a letter, then letters, digits, '_' or '-' (up to "
                            "64); 'latest', 'aliases' and 'v<digits>' are reserved",
                       "invalid_alias")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AliasFile:
    """The aliases of one model, in `<model folder>/aliases.json`, written whole and renamed
    into place (a reader never sees half a file). Each alias keeps the versions it pointed at,
    oldest first, the last one current."""

    _lock = threading.Lock()  # one writer at a time within a process

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / ALIASES_FILE
        self.name = name

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            found: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ApiError(500, f"the aliases of {self.name} are unreadable: {exc}",
                           "aliases_unreadable") from None
        return found

    def _write(self, aliases: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".aliases-", dir=self.path.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(aliases, out, indent=2)
        os.replace(tmp, self.path)

    def get(self, alias: str) -> str | None:
        entry = self.read().get(alias)
        return str(entry["version"]) if entry else None

    def require(self, alias: str) -> str:
        """The version `alias` points at, or a 404 naming the aliases there are."""
        check_alias(alias)
        found = self.get(alias)
        if found is None:
            known = ", ".join(sorted(self.read())) or "none"
            raise ApiError(404, f"{self.name} has no alias {alias!r} (aliases: {known})",
                           "unknown_alias")
        return found

    def set(self, alias: str, version: str) -> dict[str, Any]:
        """Point `alias` at `version` (create or move it); where it pointed before."""
        check_alias(alias)
        with self._lock:
            aliases = self.read()
            entry = aliases.get(alias) or {"history": []}
            previous = entry.get("version")
            if previous != version:
                entry["history"] = [*entry["history"], version][-HISTORY_KEPT:]
            aliases[alias] = {**entry, "version": version, "updated": now()}
            self._write(aliases)
        return {"name": self.name, "alias": alias, "version": version, "previous": previous}

    def back(self, alias: str) -> dict[str, Any]:
        """Move `alias` back to the version it pointed at before this one (a rollback): a 409
        `no_previous_version` when it never pointed anywhere else."""
        with self._lock:
            current = self.require(alias)
            aliases = self.read()
            history = list(aliases[alias].get("history") or [current])
            if len(history) < 2:
                raise ApiError(409, f"{self.name} alias {alias!r} has pointed at {current} only: "
                                    "there is no previous version to go back to",
                               "no_previous_version")
            history.pop()
            aliases[alias] = {"version": history[-1], "history": history, "updated": now()}
            self._write(aliases)
        return {"name": self.name, "alias": alias, "version": history[-1], "previous": current}
