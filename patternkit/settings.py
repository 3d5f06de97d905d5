"""Settings shared by every service, read from the environment when a service starts.

Each service declares one pydantic-settings class; nothing is read at import time. The
topology runner fills these variables from `topology.toml` (`env`); a user overrides one
with `make run SET="service.VAR=value"` (`python -m patternkit run --set ...`).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service has: its name, its instance name and its request limits."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", protected_namespaces=())

    service_name: str = Field("service", description="logical name of the service")
    instance_name: str = Field("", description="this replica's name (X-Served-By)")
    max_body_bytes: int = Field(1_048_576, gt=0, description="larger request bodies get 413")
    log_level: str = "info"

    @property
    def served_by(self) -> str:
        return self.instance_name or self.service_name


class BatchSettings(ServiceSettings):
    """A service that takes batches of rows: how many one request may hold."""

    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")


class PredictorSettings(BatchSettings):
    """The template predictor: which model to load and which faults to inject."""

    service_name: str = "predictor"
    model_path: str = Field(..., description="model directory or .onnx file with a manifest")
    delay_ms: int = Field(0, ge=0, description="added latency per /predict call")
    fail_mode: str = Field("none", description="none | always | first_n:N | every:N | rate:P")
    load_delay_ms: int = Field(0, ge=0, description="extra time before /ready turns 200")
