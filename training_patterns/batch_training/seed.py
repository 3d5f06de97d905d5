"""Fills T1's DWH once: `batch_training_iris_raw` gets iris plus the dirty rows of `dwh.DIRTY_ROWS`.

A one-shot that stands in for the upstream loads; it writes nothing when the table already
has rows (a restarted stack keeps its DWH).
"""

from __future__ import annotations

import logging
import os

from patternkit import db, logs
from training_patterns.batch_training import dwh

log = logging.getLogger("batch_training.seed")


def seed(url: str) -> int:
    engine = db.make_engine(url)
    try:
        dwh.create_tables(engine)
        with engine.begin() as conn:
            if dwh.count(conn):
                log.info("the raw table already holds %d rows: left as it is", dwh.count(conn))
                return 0
            added = dwh.insert_rows(conn, dwh.seed_rows())
        log.info("raw table seeded: %d rows (%d of them dirty)", added, len(dwh.DIRTY_ROWS))
        return added
    finally:
        engine.dispose()


def main() -> None:
    logs.configure(service="seed")
    seed(os.environ["DATABASE_URL"])


if __name__ == "__main__":
    main()
