"""Settings shared by every service, read from the environment when a service starts.

Each service declares one pydantic-settings class; nothing is read at import time. The
topology runner fills these variables from `topology.toml` (`env`); a user overrides one
with `make run SET="service.VAR=value"` (`python -m patternkit run --set ...`).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service has: its name, its instance name and its request limits."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", protected_namespaces=())

    service_name: str = Field("service", description="logical name of the service")
    instance_name: str = Field("", description="this replica's name (X-Served-By)")
    max_body_bytes: int = Field(1_048_576, gt=0, description="larger request bodies get 413")
    log_level: str = "info"
    docs_example_width: int | None = Field(
        None, gt=0, description="the row width of the docs' predict examples, for a service "
        "that passes rows on without learning its model's (the iris row's 4 by default)")

    @property
    def served_by(self) -> str:
        return self.instance_name or self.service_name


class BatchSettings(ServiceSettings):
    """A service that takes batches of rows: how many one request may hold."""

    max_batch_rows: int = Field(1000, gt=0, description="larger batches get 413")


class PredictionLogSettings(BatchSettings):
    """A service that logs through `patternkit.predlog` (O4): where to, and the spool's
    bounds (`predlog.open_log` opens it)."""

    prediction_log_url: str = Field("", description="log each prediction: a redis:// URL (a "
                                                    "stream) or a database URL; empty: none")
    prediction_log_prefix: str = Field("prediction_log", description="the log is "
                                       "<prefix>_prediction_log")
    prediction_log_buffer: int = Field(10_000, ge=1, description="records spooled while the "
                                       "log is down; more are dropped and counted")
    prediction_log_retry_s: float = Field(5.0, gt=0, description="longest wait between write "
                                          "attempts while the log is down")
    prediction_log_maxlen: int = Field(100_000, ge=1, description="a stream log's MAXLEN ~ "
                                       "(entries Redis keeps)")


class PredictorSettings(PredictionLogSettings):
    """The template predictor: which model to load and which faults to inject.

    The model is a local artifact (MODEL_PATH), or, when MODEL_REPO_URL is set, the one
    MODEL_NAME and MODEL_VERSION name in a model repository, downloaded at start-up
    (patternkit.loader).
    """

    service_name: str = "predictor"
    model_path: str = Field("", description="model directory or .onnx file with a manifest")
    delay_ms: int = Field(0, ge=0, description="added latency per /predict call")
    delay_blocks: bool = Field(False, description="DELAY_MS holds the process (a blocking "
                               "sleep, as a CPU-bound model does) instead of yielding")
    fail_mode: str = Field("none", description="none | always | first_n:N | every:N | rate:P")
    load_delay_ms: int = Field(0, ge=0, description="extra time before /ready turns 200")
    # a model from a repository (O2): downloaded, verified and checked before it serves
    model_repo_url: str = Field("", description="model repository to download the model from")
    model_name: str = Field("", description="the model to download (MODEL_REPO_URL)")
    model_version: str = Field("", description="its version, `latest`, or an alias "
                                                "(`champion`) the repository resolves")
    model_download_dir: str = Field("", description="where downloads go (default: a temp dir)")
    expected_features: int = Field(0, ge=0, description="input width the clients send; 0: any")
    max_model_bytes: int = Field(200_000_000, gt=0, description="larger downloads are refused")
    repo_timeout_s: float = Field(30.0, gt=0, description="per repository request")
    # a model baked into a bundle (O1): its bundle.json, checked against the model
    bundle_manifest: str = Field("", description="bundle.json of the bundle the model is in")
    bundle_sha256: str = Field("", description="sha256 of the bundle file it was unpacked from")
    # every prediction logged through patternkit.predlog (O4): PredictionLogSettings' fields
    prediction_log_prefix: str = Field("predictor", description="the log is "
                                                                "<prefix>_prediction_log")
    # a member of a service registry (patternkit.discovery): a heartbeat key with a TTL
    registry_url: str = Field("", description="register in this Redis once ready (SET "
                                              "service:<id> EX REGISTRY_TTL_S); empty: none")
    registry_ttl_s: float = Field(3.0, ge=1, description="a member that stops beating drops "
                                                         "out after this")
    advertise_url: str = Field("", description="the URL registered for this server")

    @model_validator(mode="after")
    def _one_source(self) -> PredictorSettings:
        if self.model_repo_url:
            missing = [n for n, v in (("MODEL_NAME", self.model_name),
                                      ("MODEL_VERSION", self.model_version)) if not v]
            if missing:
                raise ValueError(f"MODEL_REPO_URL is set: set {' and '.join(missing)} too")
            if self.model_path:
                raise ValueError("set MODEL_PATH or MODEL_REPO_URL, not both")
        elif not self.model_path:
            raise ValueError("set MODEL_PATH (a model directory), or MODEL_REPO_URL with "
                             "MODEL_NAME and MODEL_VERSION")
        return self
