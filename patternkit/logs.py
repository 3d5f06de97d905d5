"""Logging, configured by entry points (never by the library): text or one JSON object a line.

`configure()` is called by what starts a process (`python -m patternkit.serve`, the CLI, a
worker's start-up): LOG_LEVEL (default info) and LOG_FORMAT (`text`, default, or `json`)
come from the environment, the service name from INSTANCE_NAME / SERVICE_NAME. Every record
carries the current request id, which the service middleware sets in `request_id_var`; the
access records (`patternkit.access`, on with ACCESS_LOG=1) add the route, status and latency.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# fields a record may carry (logging's `extra=`) that the JSON line shows by name
EXTRA_FIELDS = ("route", "status", "latency_ms", "method", "path")


class ContextFilter(logging.Filter):
    """Stamp each record with the service name and the request id of the running request."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, service, request_id, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": getattr(record, "service", None),
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        for key in EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [service rid] message`; the request id only inside a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(where)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        service = getattr(record, "service", "")
        record.where = f"{service} {rid}" if rid else service
        return super().format(record)


def json_format() -> bool:
    """Whether LOG_FORMAT asks for one JSON object a line."""
    return (os.environ.get("LOG_FORMAT") or "text").lower() == "json"


def configure(
    service: str | None = None, level: str | None = None, fmt: str | None = None
) -> None:
    """Send every record to stderr in LOG_FORMAT at LOG_LEVEL; replaces earlier handlers."""
    env = os.environ
    service = service or env.get("INSTANCE_NAME") or env.get("SERVICE_NAME") or "patternkit"
    level = (level or env.get("LOG_LEVEL") or "info").upper()
    fmt = (fmt or env.get("LOG_FORMAT") or "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(service))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings are records too (py.warnings), in the same format
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
    access_on = env.get("ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
    logging.getLogger("patternkit.access").setLevel(logging.INFO if access_on else logging.WARNING)
