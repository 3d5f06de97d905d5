"""The seed job of S9: creates the DWH's item table and loads the 150 iris rows, once.

Run as a one-shot before the DWH starts: `python -m serving_patterns.data_cache.seed`. Item
`i` (1-150) is iris row `i - 1`, so ids 1-50 are setosa, 51-100 versicolor, 101-150
virginica. Rows are upserted, so a rerun resets the seeded ids and keeps every other row.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from patternkit.db import create_tables, make_engine
from patternkit.models import load_dataset
from serving_patterns.data_cache.items import (
    FEATURES,
    ITEMS,
    METADATA,
    DatabaseSettings,
    upsert_items,
)


class SeedSettings(DatabaseSettings):
    service_name: str = "seed"


def iris_items() -> list[dict[str, object]]:
    X, _, _, _ = load_dataset("iris")
    now = datetime.now(UTC)
    return [
        {"id": i + 1, **{name: round(float(v), 4) for name, v in zip(FEATURES, row, strict=True)},
         "updated_at": now}
        for i, row in enumerate(X)
    ]


def main() -> int:
    cfg = SeedSettings()
    started = time.perf_counter()
    engine = make_engine(cfg.database_url)
    try:
        create_tables(engine, METADATA)
        rows = iris_items()
        upsert_items(engine, rows)
        where = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    took = time.perf_counter() - started
    print(f"seeded {len(rows)} items (ids 1-{len(rows)}) into {ITEMS.name} at {where} "
          f"in {took:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
