"""Settings that change while a service runs: one validated config, its audit, its reloads.

`RuntimeConfig` holds the current config, a frozen pydantic model that a request reads with
one attribute lookup. A change comes from the API (`update`: a partial body merged into the
current values) or from a config file (YAML, TOML or JSON) picked up on `reload` or by `watch`
(its mtime, polled). Every change is validated as a whole config before it is applied: a bad
value is refused with the field named (`ConfigRejected`, a 422 `invalid_config`) and the old
config stays. Each applied change is logged, kept in a bounded history (time, field, old,
new, source) and published on `/metadata`; `add_config_routes` serves it over HTTP. O6's
parameters and O7's routing rules are built on it.
"""


import asyncio
import json
import logging
import os
import tomllib
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import yaml
from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from patternkit.service import ApiError, ServiceState, json_response, request_id

log = logging.getLogger("patternkit.runtime_config")

C = TypeVar("C", bound=BaseModel)
FileMode = Literal["merge", "replace"]
SOURCES = ("api", "file")
HISTORY_LIMIT = 1000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ConfigRejected(ApiError):
    """A config change that does not validate: a 422 naming the field, the old config kept."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None,
                 status: int = 422, error: str = "invalid_config") -> None:
        super().__init__(status, message, error, details)


def describe(exc: ValidationError, fields: Mapping[str, Any] | None = None) -> ConfigRejected:
    """A ValidationError as a ConfigRejected: the first problem in the message (`field: what
    is wrong (got value)`), every problem in `details`. `fields` (the model's) are listed
    when a field is unknown."""
    details = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            known = f" (fields: {', '.join(fields)})" if fields and len(e["loc"]) == 1 else ""
            msg = f"unknown field{known}"
        elif e["type"] not in ("missing", "value_error"):  # a validator's message says it
            msg = f"{msg} (got {json.dumps(e.get('input'), default=str)})"
        details.append({"loc": loc, "msg": msg})
    first = details[0] if details else {"loc": "config", "msg": "invalid"}
    return ConfigRejected(f"{first['loc']}: {first['msg']}", details)


def merged(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes` laid over `current`; a mapping over a mapping is merged key by key, so
    `{"thresholds": {"model_b": 0.99}}` leaves the other thresholds as they are."""
    out = dict(current)
    for key, value in changes.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merged(old, value)
        else:
            out[key] = value
    return out


def diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, old, new) for every leaf that differs; mappings are compared key by
    key (a key on one side only has None on the other), anything else as a whole. Keys kept
    in another order (an ordered routing table) are one more change, `field[order]`."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[tuple[str, Any, Any]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        kept_old, kept_new = [k for k in old if k in new], [k for k in new if k in old]
        if kept_old != kept_new:
            out.append((f"{path}[order]", kept_old, kept_new))
        return out
    return [] if old == new else [(path, old, new)]


def file_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What an edit changed in a file's content: the keys whose value changed (for a mapping,
    only its changed keys). Keys the edit removed are not in it (their values stay)."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            inner = file_delta(old, value)
            if inner:
                out[key] = inner
        elif key not in before or old != value:
            out[key] = value
    return out


def read_file(path: Path) -> Any:
    """A config file's content, parsed by its suffix: .yaml/.yml, .toml or .json."""
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix == ".json":
        return json.loads(text)
    raise ValueError(f"unknown config format {suffix!r}: use .yaml, .yml, .toml or .json")


@dataclass(frozen=True)
class Change:
    """One applied field change: the audit record."""

    at: str
    version: int
    field: str
    old: Any
    new: Any
    source: str
    request_id: str | None = None


class RuntimeConfig(Generic[C]):
    """The current config of a service, changed at runtime and audited.

    `model` validates every config as a whole, with `context` (e.g. the known backend names)
    passed to its validators. `file` is read in `mode` "merge" (its fields are laid over the
    config; an edit applies the fields it changed, so it does not undo an API change to
    another field) or "replace" (the file is the whole config: a routing table). With `state`,
    the config is published on `/metadata` under `name` and its counts are declared as
    `{name}_changes_total{source}`, `{name}_rejected_total{source}` and `{name}_version`.
    """

    def __init__(
        self,
        model: type[C],
        initial: Mapping[str, Any] | C,
        *,
        name: str = "config",
        context: Mapping[str, Any] | None = None,
        file: str | Path | None = None,
        mode: FileMode = "merge",
        state: ServiceState | None = None,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        self.model = model
        self.name = name
        self.context = dict(context or {})
        self.file = Path(file) if file else None
        self.mode = mode
        self.state = state
        self._current = self.validate(
            initial.model_dump() if isinstance(initial, BaseModel) else initial
        )
        self.started = self._current
        self.version = 0
        self.updated_at = now_iso()
        self.history: deque[Change] = deque(maxlen=history_limit)
        self.changes_total = 0
        self.rejected_total = 0
        self.last_rejected: dict[str, Any] | None = None
        self.file_loaded_at: str | None = None
        self.file_error: dict[str, Any] | None = None
        self._file_data: dict[str, Any] = {}
        self._file_sig: tuple[int, int, int] | None = None
        self._changes: Counter | None = None
        self._rejected: Counter | None = None
        if state is not None:
            metrics = state.metrics
            self._changes = metrics.counter(
                f"{name}_changes_total", f"fields of the {name} changed, by source",
                {"source": SOURCES}, stat=f"{name}.changes",
            )
            self._rejected = metrics.counter(
                f"{name}_rejected_total", f"{name} changes refused as invalid, by source",
                {"source": SOURCES}, stat=f"{name}.rejected",
            )
            metrics.gauge(f"{name}_version", f"changes applied to the {name} since start",
                          stat=f"{name}.version").set_function(lambda: self.version)
        self.publish()

    @classmethod
    def from_file(cls, model: type[C], file: str | Path, **kwargs: Any) -> "RuntimeConfig[C]":
        """A config whose file is the whole of it ("replace" mode), read at once: a
        ConfigRejected naming the file when it is missing or invalid."""
        path = Path(file)
        try:
            content = read_file(path)
        except (OSError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            message = f"{path.name}: cannot read it: {exc}".replace("\n", " ")
            raise ConfigRejected(message) from None
        if not isinstance(content, dict):
            raise ConfigRejected(f"{path.name}: expected a mapping of fields")
        try:
            config = cls(model, content, file=path, mode="replace", **kwargs)
        except ConfigRejected as exc:
            raise ConfigRejected(f"{path.name}: {exc.message}", exc.details) from None
        config.load_at_start(required=True)
        return config

    # -- reading -----------------------------------------------------------------------------

    @property
    def current(self) -> C:
        return self._current

    def values(self) -> dict[str, Any]:
        return self._current.model_dump(mode="json")

    def snapshot(self) -> dict[str, Any]:
        """What `GET {prefix}` and `/metadata` show: the values and where they came from."""
        last = self.history[-1] if self.history else None
        return {
            "values": self.values(),
            "version": self.version,
            "updated_at": self.updated_at,
            "last_change": asdict(last) if last else None,
            "changes": self.changes_total,
            "rejected": self.rejected_total,
            "last_rejected": self.last_rejected,
            "file": None if self.file is None else {
                "path": str(self.file), "mode": self.mode, "loaded_at": self.file_loaded_at,
                "error": self.file_error,
            },
        }

    def publish(self) -> None:
        if self.state is not None:
            self.state.metadata[self.name] = self.snapshot()

    def changes(self, limit: int | None = None, field: str | None = None) -> list[Change]:
        """The history, oldest first; only `field` (and its sub-fields) when given."""
        found = [c for c in self.history
                 if field is None or c.field == field or c.field.startswith(f"{field}.")]
        return found[-limit:] if limit else found

    # -- changing ----------------------------------------------------------------------------

    def validate(self, data: Mapping[str, Any]) -> C:
        try:
            return self.model.model_validate(data, context=self.context)
        except ValidationError as exc:
            raise describe(exc, self.model.model_fields) from None

    def update(
        self, changes: Mapping[str, Any], source: str = "api", rid: str | None = None,
        origin: str | None = None,
    ) -> list[Change]:
        """Lay `changes` over the current config (top-level names case-insensitively) and
        apply it if it validates; a ConfigRejected otherwise, with nothing changed (its
        message starts with `origin`, e.g. the file's name, when given)."""
        if not isinstance(changes, Mapping):
            raise self._refuse(ConfigRejected(
                f"{self.name}: expected an object of fields, got {type(changes).__name__}"
            ), source)
        lowered = {k.lower() if isinstance(k, str) else k: v for k, v in changes.items()}
        return self._apply(merged(self.values(), lowered), source, rid, origin)

    def replace(
        self, data: Mapping[str, Any], source: str = "api", rid: str | None = None,
        origin: str | None = None,
    ) -> list[Change]:
        """Make `data` the whole config if it validates (a ConfigRejected otherwise)."""
        return self._apply(data, source, rid, origin)

    def _apply(
        self, data: Mapping[str, Any], source: str, rid: str | None, origin: str | None
    ) -> list[Change]:
        try:
            new = self.validate(data)
        except ConfigRejected as exc:
            if origin:
                exc = ConfigRejected(f"{origin}: {exc.message}", exc.details)
            raise self._refuse(exc, source) from None
        found = diff(self.values(), new.model_dump(mode="json"))
        if not found:
            return []
        self.version += 1
        self.updated_at = now_iso()
        self._current = new
        applied = [Change(self.updated_at, self.version, f, old, value, source, rid)
                   for f, old, value in found]
        for change in applied:
            self.history.append(change)
            log.info("%s change #%d by %s: %s %s -> %s", self.name, self.version, source,
                     change.field, json.dumps(change.old), json.dumps(change.new))
        self.changes_total += len(applied)
        if self._changes is not None:
            self._changes.labels(source).inc(len(applied))
        self.publish()
        return applied

    def _refuse(self, exc: ConfigRejected, source: str) -> ConfigRejected:
        self.rejected_total += 1
        self.last_rejected = {"at": now_iso(), "source": source, "message": exc.message}
        if self._rejected is not None:
            self._rejected.labels(source).inc()
        log.warning("%s change by %s refused, nothing changed: %s", self.name, source,
                    exc.message)
        self.publish()
        return exc

    # -- the file ----------------------------------------------------------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        assert self.file is not None
        try:
            st = os.stat(self.file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self, rid: str | None = None, *, full: bool = False) -> list[Change]:
        """Read the file now and apply what it says (source `file`); a ConfigRejected naming
        the file when it cannot be read, parsed or validated (the config stays as it was).
        In "merge" mode only the fields the file changed since its last load are applied,
        or, with `full`, every field it holds (the file wins over earlier API changes)."""
        source = "file"
        if self.file is None:
            raise ConfigRejected(f"this service has no {self.name} file", status=409,
                                 error="no_config_file")
        self._file_sig = self._signature()
        where = self.file.name
        try:
            content = read_file(self.file)
            if content is None:
                content = {}
            if not isinstance(content, dict):
                raise ValueError(f"expected a mapping of fields, got {type(content).__name__}")
            if self.mode == "replace":
                applied = self.replace(content, source, rid, where)
            else:
                delta = content if full else file_delta(self._file_data, content)
                applied = self.update(delta, source, rid, where)
        except ConfigRejected as exc:
            self.file_error = {"at": now_iso(), "message": exc.message}
            self.publish()
            raise
        except (OSError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            message = f"{where}: cannot read it: {exc}".replace("\n", " ")
            self.file_error = {"at": now_iso(), "message": message}
            raise self._refuse(ConfigRejected(message), source) from None
        self._file_data = content
        self.file_loaded_at = now_iso()
        self.file_error = None
        self.publish()
        log.info("%s loaded from %s: %d change(s)", self.name, self.file, len(applied))
        return applied

    def load_at_start(self, required: bool = False) -> None:
        """Read the file once at start-up if it exists (required: it must, and be valid)."""
        if self.file is None:
            return
        if not self.file.exists() and not required:
            log.info("no %s file at %s yet; watching for it", self.name, self.file)
            self._file_sig = None
            return
        self.reload()

    async def watch(self, interval_s: float = 0.5) -> None:
        """Reload the file whenever it changes (inode, mtime or size), once the change has
        held for one more poll, so a file caught half-written is not loaded (cancel to stop)."""
        if self.file is None:
            return
        pending: tuple[int, int, int] | None = None
        while True:
            await asyncio.sleep(interval_s)
            sig = self._signature()
            if sig == self._file_sig:
                pending = None
                continue
            if sig != pending:
                pending = sig
                continue
            pending = None
            if sig is None:
                self._file_sig = None
                log.warning("%s file %s is gone; the %s stays as it is", self.name,
                            self.file, self.name)
                continue
            # a bad file is logged, counted and shown as the file's error; the old config stays
            with suppress(ConfigRejected):
                self.reload()


def add_config_routes(
    app: FastAPI,
    prefix: str = "/config",
    slot: str = "config",
    *,
    example: dict[str, Any] | None = None,
    writable: bool = True,
    what: str = "config",
) -> None:
    """`GET {prefix}` (values, version, file state), `PUT {prefix}` (a partial change, when
    `writable`), `GET {prefix}/history` and `POST {prefix}/reload` (apply every field of the
    file now), for the RuntimeConfig in the lifespan state's `slot`."""

    def config_of(request: Request) -> RuntimeConfig[Any]:
        found: RuntimeConfig[Any] = getattr(request.state, slot)
        return found

    tags: list[str | Enum] = [what]

    async def show(request: Request) -> Response:
        return json_response(config_of(request).snapshot())

    app.get(prefix, tags=tags, summary=f"the current {what}")(show)

    if writable:
        async def change(
            request: Request,
            body: Annotated[dict[str, Any], Body(
                description="the fields to change; a mapping field merges key by key",
                openapi_examples={"change": {"value": example or {}}},
            )],
        ) -> Response:
            config = config_of(request)
            applied = config.update(body, "api", request_id(request))
            return json_response({**config.snapshot(), "changed": [asdict(c) for c in applied]})

        app.put(
            prefix, tags=tags, summary=f"change {what} fields at runtime",
            responses={422: {"description": "a field is invalid: nothing changed"}},
        )(change)

    async def history(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = 100,
        field: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        config = config_of(request)
        found = config.changes(limit, field)
        return json_response({"changes": [asdict(c) for c in found], "total": config.changes_total})

    app.get(f"{prefix}/history", tags=tags, summary=f"the audit of {what} changes")(history)

    async def reload(request: Request) -> Response:
        config = config_of(request)
        applied = config.reload(request_id(request), full=True)
        return json_response({**config.snapshot(), "changed": [asdict(c) for c in applied]})

    app.post(
        f"{prefix}/reload", tags=tags, summary=f"re-read the {what} file now",
        responses={409: {"description": "no file is configured"},
                   422: {"description": "the file is invalid: nothing changed"}},
    )(reload)
