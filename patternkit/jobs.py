"""Background jobs: a Celery app configured so a job is neither lost nor retried forever.

`make_celery` builds the app on a Redis broker with late acks, one message per worker, a short
visibility timeout and a fast sweep of unacked messages, so a task whose worker is killed is
redelivered within seconds. `JobStore` keeps one Redis hash per job (pending, running, done,
failed, attempts, result or error) and `JobQueue` records a job, then sends its message.

The worker side: `WorkerSettings` is the base of every worker's settings (broker, fault knobs,
a visibility timeout checked against the longest job, the heartbeat file), `make_worker`
builds its app (`make_celery` plus a heartbeat refreshed while it consumes, which the
topology's `worker = "module"` healthcheck reads), `open_on_start` opens its resources once
per process, `lazy_app` lets `celery -A module` find `app`, and `transient_errors()` lists the
failures worth another attempt.

Why not Celery's result backend: on the Redis backend every `send_task` subscribes the
producer to a pub/sub channel for the result, which a web API that never calls `.get()`
leaks, and Celery reports an id it has never seen as PENDING, like a queued one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar, Protocol, Self

import orjson
import redis
from celery import Celery, bootsteps
from celery.signals import celeryd_init, setup_logging
from kombu.exceptions import OperationalError as BrokerError
from pydantic import Field, model_validator

from patternkit import heartbeat, logs
from patternkit.faults import Faults, InjectedFault
from patternkit.settings import ServiceSettings

log = logging.getLogger("patternkit.jobs")

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

# what a producer sees when Redis (the broker and the job records) is down
QUEUE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, BrokerError)

# Count an attempt and mark the job running, unless it already finished (a duplicate
# delivery): returns the attempt number, or 0 for a finished job.
BEGIN_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then return 0 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return attempt
"""


def make_celery(
    name: str,
    broker_url: str,
    *,
    result_backend: str | None = None,
    visibility_timeout_s: float = 5.0,
    **overrides: Any,
) -> Celery:
    """A Celery app on `broker_url` whose tasks survive a killed worker.

    `visibility_timeout_s` is how long a delivered, unacked message waits before another
    worker may take it: it must exceed the longest task (and any retry countdown), or a task
    still running is delivered twice. Tasks must therefore be idempotent. The default queue
    is `name`, so patterns sharing one Redis do not take each other's messages.
    """
    app = Celery(name, broker=broker_url, backend=result_backend, set_as_current=False)
    app.conf.update(
        task_default_queue=name,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # ack after the task ran, so a lost worker's task is redelivered
        task_reject_on_worker_lost=True,  # a pool child killed mid-task: requeue, do not ack
        worker_prefetch_multiplier=1,  # hold no more messages than the worker is running
        task_track_started=True,
        task_ignore_result=result_backend is None,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": 1,  # sweep for expired unacked messages every second
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
    )
    app.conf.update(overrides)
    return app


def lazy_app(factory: Callable[[], Celery]) -> Callable[[str], Any]:
    """A module `__getattr__` for `celery -A module`: `app` is built by `factory` (which reads
    the environment) on its first access, so importing the module reads nothing.

    In the worker module: `__getattr__ = lazy_app(create_worker)`.
    """
    built: list[Celery] = []

    def module_getattr(name: str) -> Any:
        if name != "app":
            raise AttributeError(f"module {factory.__module__!r} has no attribute {name!r}")
        if not built:
            built.append(factory())
        return built[0]

    return module_getattr


def open_on_start(app: Celery, open_: Callable[[], None], close: Callable[[], None]) -> None:
    """Call `open_` when a worker starts, before it logs "ready." (an exception stops the
    worker), and `close` when it stops: a model or a DB pool opened once per process."""

    class OpenResources(bootsteps.StartStopStep):
        def start(self, parent: Any) -> None:
            open_()

        def stop(self, parent: Any) -> None:
            close()

    app.steps["worker"].add(OpenResources)


class WorkerSettings(ServiceSettings):
    """What every Celery worker has: its broker, its fault knobs, its redelivery timeout and
    its heartbeat. A pattern's worker subclasses it and adds its own settings.

    `LONGEST_JOB` names the settings whose sum bounds how long one message's task runs
    (a retry's countdown included): VISIBILITY_TIMEOUT_S must exceed it, or a task still
    running is delivered to another worker. `JOB` is what one message is called in the error.
    """

    LONGEST_JOB: ClassVar[tuple[str, ...]] = ("delay_ms",)
    JOB: ClassVar[str] = "job"

    service_name: str = "worker"
    redis_url: str = Field(..., description="Redis: the Celery broker")
    delay_ms: int = Field(0, ge=0, description="added time per job: a slow model")
    fail_mode: str = Field("none", description="none | always | first_n:N | rate:P")
    visibility_timeout_s: float = Field(
        5.0, gt=0, description="an unacked job is redelivered after this; > the longest job"
    )
    heartbeat_file: str | None = Field(
        None, description="refreshed while the worker consumes (its healthcheck); the topology "
        "sets it"
    )
    heartbeat_interval_s: float = Field(heartbeat.INTERVAL_S, gt=0, le=heartbeat.MAX_AGE_S / 2)

    @model_validator(mode="after")
    def _visibility_exceeds_a_job(self) -> Self:
        longest_ms = sum(getattr(self, name) for name in self.LONGEST_JOB)
        if self.visibility_timeout_s * 1000 <= longest_ms:
            names = " + ".join(name.upper() for name in self.LONGEST_JOB)
            raise ValueError(
                f"VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} must exceed the longest "
                f"{self.JOB} ({names} = {longest_ms} ms), or running {self.JOB}s run twice"
            )
        return self

    def faults(self) -> Faults:
        """DELAY_MS and FAIL_MODE, parsed (one `Faults` per worker: it counts the calls)."""
        return Faults.parse(self.fail_mode, self.delay_ms)


@cache
def transient_errors() -> tuple[type[Exception], ...]:
    """Failures worth another attempt: an injected (flaky) fault, a busy or unreachable DB or
    Redis. SQLAlchemy is imported on the first call, so that producers need not load it."""
    from sqlalchemy.exc import OperationalError

    return (InjectedFault, OperationalError, redis.ConnectionError)


def describe(exc: BaseException) -> str:
    """An error as a job record shows it: `Type: message`."""
    return f"{type(exc).__name__}: {exc}"


def beat_while_consuming(
    app: Celery, path: str, interval_s: float = heartbeat.INTERVAL_S
) -> None:
    """Refresh the heartbeat file `path` while the worker consumes its queues.

    A consumer bootstep: it starts once the task consumer is up (when the worker is about to
    log "ready.", after `open_on_start` resources opened) and stops, removing the file, when
    the connection to the broker is lost or the worker shuts down. A file left by an earlier
    process is removed when this one starts.
    """

    class Heartbeat(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            heartbeat.clear(path)  # an earlier process's file does not vouch for this one
            self.beat = heartbeat.Heartbeat(path, interval_s)
            super().__init__(parent, **kwargs)

        def start(self, parent: Any) -> None:
            self.beat.start()

        def stop(self, parent: Any) -> None:
            self.beat.stop()

        shutdown = terminate = stop

    app.steps["consumer"].add(Heartbeat)


def log_like_services(service: str) -> None:
    """Let `patternkit.logs.configure()` set up a worker's logging, not Celery.

    Celery configures logging itself unless a receiver of its `setup_logging` signal does;
    this one does (LOG_FORMAT, LOG_LEVEL, the service name), so a worker's lines look like
    every other process's: text, or one JSON object a line. It runs on `celeryd_init` too,
    which comes first, so that the worker's start-up warnings are in that format as well.
    """

    def configure(**_: Any) -> None:
        logs.configure(service=service)

    def on_init(instance: Any = None, **_: Any) -> None:
        configure()
        if logs.json_format() and instance is not None:
            instance.quiet = True  # the start-up banner is plain text on stdout: not in JSON

    celeryd_init.connect(on_init, weak=False, dispatch_uid="patternkit.jobs.logging")
    setup_logging.connect(configure, weak=False, dispatch_uid="patternkit.jobs.logging")


class Opens(Protocol):
    """What a worker process opens once (a model, a DB pool) and closes when it stops."""

    def open(self) -> None: ...

    def close(self) -> None: ...


def make_worker(
    queue: str, settings: WorkerSettings, opens: Opens | None = None, **overrides: Any
) -> Celery:
    """A worker process's Celery app: `make_celery(queue)` on the settings' broker and
    visibility timeout, logging configured by `patternkit.logs` (`log_like_services`), with
    a heartbeat while it consumes when HEARTBEAT_FILE is set, and `opens` opened once per
    process before it logs "ready." (`open_on_start`)."""
    log_like_services(settings.served_by)
    app = make_celery(
        queue, settings.redis_url, visibility_timeout_s=settings.visibility_timeout_s,
        **overrides,
    )
    if opens is not None:
        open_on_start(app, opens.open, opens.close)
    if settings.heartbeat_file:
        beat_while_consuming(app, settings.heartbeat_file, settings.heartbeat_interval_s)
    return app


def _iso(ts: str | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    """One job's record as stored in Redis."""

    id: str
    status: str
    attempts: int
    fields: dict[str, str]

    @property
    def result(self) -> dict[str, Any] | None:
        raw = self.fields.get("result")
        return orjson.loads(raw) if raw else None

    @property
    def error(self) -> str | None:
        return self.fields.get("error")

    def view(self) -> dict[str, Any]:
        """The job as an API shows it: status, attempts, times, then result or error."""
        out: dict[str, Any] = {"job_id": self.id, "status": self.status, "attempts": self.attempts}
        if self.status == DONE:
            out.update(self.result or {})
        elif self.status == FAILED:
            out["error"] = self.error
        elif self.fields.get("last_error"):
            out["last_error"] = self.fields["last_error"]
        for key in ("submitted_at", "started_at", "finished_at"):
            if self.fields.get(key):
                out[key] = _iso(self.fields[key])
        if self.fields.get("worker"):
            out["worker"] = self.fields["worker"]
        return out


class JobStore:
    """Job records as Redis hashes `{prefix}:job:{id}`, kept `ttl_s` after their last change."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int = 86_400) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._begin = client.register_script(BEGIN_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str, ttl_s: int = 86_400) -> JobStore:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        return cls(client, prefix, ttl_s)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _set(self, job_id: str, fields: dict[str, Any]) -> None:
        key = self.key(job_id)
        pipe = self.client.pipeline()
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def create(self, job_id: str) -> None:
        """Record a job as pending (the producer, before it sends the message)."""
        self._set(job_id, {"status": PENDING, "attempts": 0, "submitted_at": time.time()})

    def begin(self, job_id: str, worker: str) -> int:
        """Count an attempt and mark the job running; 0 if it already finished."""
        return int(self._begin(keys=[self.key(job_id)], args=[time.time(), worker, self.ttl_s]))

    def start_attempt(self, job_id: str, worker: str, max_attempts: int) -> int | None:
        """Begin an attempt on a delivered job and return its number, or None when it must not
        run: it finished already (a duplicate delivery), or it was delivered more than
        `max_attempts` times because every attempt died with its worker (e.g. an input that
        crashes the process), in which case it is failed now instead of crashing another."""
        attempt = self.begin(job_id, worker)
        if attempt == 0:
            log.warning("job %s already finished: duplicate delivery ignored", job_id)
            return None
        if attempt > max_attempts:
            self.fail(job_id, f"gave up: {attempt - 1} attempts died with their worker")
            log.error("job %s failed: %d attempts died with their worker", job_id, attempt - 1)
            return None
        return attempt

    def requeue(self, job_id: str, error: str) -> None:
        """An attempt failed and another one is scheduled."""
        self._set(job_id, {"status": PENDING, "last_error": error})

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        """Store the result (numpy arrays allowed) and mark the job done."""
        body = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        self._set(job_id, {"status": DONE, "result": body, "finished_at": time.time()})

    def fail(self, job_id: str, error: str) -> None:
        """Mark the job failed for good; nothing runs it again."""
        self._set(job_id, {"status": FAILED, "error": error, "finished_at": time.time()})

    def get(self, job_id: str) -> Job | None:
        """The job's record, or None for an id never submitted (or expired)."""
        fields: dict[str, str] = self.client.hgetall(self.key(job_id))  # type: ignore[assignment]
        if not fields:
            return None
        return Job(job_id, fields.get("status", PENDING), int(fields.get("attempts", 0)), fields)

    def delete(self, job_id: str) -> None:
        self.client.delete(self.key(job_id))

    def close(self) -> None:
        self.client.close()


def connect_producer(app: Celery) -> None:
    """Open a producer's broker connection and declare its default queue now, so that a
    service fails at start-up, not on its first job, when the broker is not there."""
    _ = app.backend  # imports the (disabled) result backend's class now
    with app.producer_pool.acquire(block=True) as producer:
        producer.connection.ensure_connection(max_retries=3)
        producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue])


class JobQueue:
    """The producer side: record a job as pending, then send its task message by name."""

    def __init__(self, app: Celery, store: JobStore, task_name: str) -> None:
        self.app = app
        self.store = store
        self.task_name = task_name

    @classmethod
    def open(cls, queue: str, redis_url: str, task_name: str, ttl_s: int = 86_400) -> JobQueue:
        """The producer of `task_name` on `queue`, its job records in the same Redis, connected
        now (`connect`), so that a service fails at start-up when Redis is not there."""
        store = JobStore.from_url(redis_url, queue, ttl_s)
        jobs = cls(make_celery(queue, redis_url), store, task_name)
        try:
            jobs.connect()
        except Exception:
            jobs.close()
            raise
        return jobs

    def connect(self) -> None:
        """Open the broker connection and declare the queue now, not on the first submit."""
        self.store.client.ping()
        connect_producer(self.app)

    def submit(self, *args: Any, job_id: str | None = None) -> str:
        """Enqueue `task_name(job_id, *args)`; returns the job id (also the Celery task id)."""
        job_id = job_id or uuid.uuid4().hex
        self.store.create(job_id)
        try:
            self.app.send_task(self.task_name, args=[job_id, *args], task_id=job_id)
        except Exception:
            self.store.delete(job_id)  # never report a job that no worker will ever see
            raise
        return job_id

    def close(self) -> None:
        self.store.close()
        self.app.close()
