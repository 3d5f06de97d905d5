"""A minimal Celery worker module for the tests of `worker = "module"` and its heartbeat.

`celery -A tests.tiny_worker worker` builds it from the environment (REDIS_URL and the
HEARTBEAT_FILE the topology sets) with `patternkit.jobs.make_worker`; its one task echoes.
"""

from __future__ import annotations

from celery import Celery

from patternkit.jobs import WorkerSettings, lazy_app, make_worker

QUEUE = "tiny"


def create_worker(settings: WorkerSettings | None = None) -> Celery:
    app = make_worker(QUEUE, settings or WorkerSettings())

    @app.task(name="tiny.echo")
    def echo(value: str) -> str:
        return value

    return app


__getattr__ = lazy_app(create_worker)
