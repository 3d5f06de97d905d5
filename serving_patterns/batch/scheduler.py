"""The trigger of S4: Celery beat sends `batch.tick` every SCHEDULE_INTERVAL_S.

Run as `celery -A serving_patterns.batch.scheduler beat --schedule <file>`, one process for the
whole system, apart from the workers so they can scale and restart without doubling or losing
the schedule. A tick that waits in the queue longer than one interval expires instead of
piling up behind a long job; the worker turns each tick into a job for the rows waiting.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from pydantic import Field

from patternkit.jobs import lazy_app, make_celery
from patternkit.settings import ServiceSettings
from serving_patterns.batch.worker import QUEUE, TICK_TASK


class SchedulerSettings(ServiceSettings):
    service_name: str = "scheduler"
    redis_url: str = Field(..., description="Redis: the Celery broker")
    schedule_interval_s: float = Field(
        3600.0, gt=0, description="time between scheduled runs (hourly by default)"
    )


def create_scheduler(settings: SchedulerSettings | None = None) -> Celery:
    """The Celery app whose beat schedule holds the one periodic entry: the batch tick."""
    cfg = settings or SchedulerSettings()
    app = make_celery(QUEUE, cfg.redis_url)
    interval = cfg.schedule_interval_s
    app.conf.beat_schedule = {
        "batch-predict": {
            "task": TICK_TASK,
            "schedule": timedelta(seconds=interval),
            "options": {"expires": interval},
        },
    }
    app.conf.beat_max_loop_interval = min(interval, 300.0)
    return app


__getattr__ = lazy_app(create_scheduler)  # `celery -A` reads `app`: built on first access
