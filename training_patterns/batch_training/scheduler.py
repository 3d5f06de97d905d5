"""The job manager's clock in T1: Celery beat sends `batch_training.tick` every
SCHEDULE_INTERVAL_S (daily by default).

Run as `celery -A training_patterns.batch_training.scheduler beat --schedule <file>`: one
process for the whole system, apart from the worker, so a worker restart neither doubles nor
loses the schedule. A tick older than one interval expires instead of piling up; the worker
turns each tick into a `schedule` run of the same steps as an on-demand one.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from pydantic import Field

from patternkit.jobs import lazy_app, make_celery
from patternkit.settings import ServiceSettings
from training_patterns.batch_training.worker import QUEUE, TICK_TASK


class SchedulerSettings(ServiceSettings):
    service_name: str = "scheduler"
    redis_url: str = Field(..., description="Redis: the Celery broker")
    schedule_interval_s: float = Field(86_400.0, gt=0, description="time between runs")


def create_scheduler(settings: SchedulerSettings | None = None) -> Celery:
    cfg = settings or SchedulerSettings()
    app = make_celery(QUEUE, cfg.redis_url)
    interval = cfg.schedule_interval_s
    app.conf.beat_schedule = {
        "batch-training": {"task": TICK_TASK, "schedule": timedelta(seconds=interval),
                           "options": {"expires": interval}},
    }
    app.conf.beat_max_loop_interval = min(interval, 300.0)
    return app


__getattr__ = lazy_app(create_scheduler)
