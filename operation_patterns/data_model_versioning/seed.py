"""The seed job of O3: creates the DWH table `data_model_versioning_dwh_iris` and loads the 150
iris flowers into it, once.

Row `id` (1-150) is iris row `id - 1`. Two collection batches, so a query can pick a data
version by date: two thirds of each species were collected on 2024-01-15 (ids not divisible
by 3), the rest on 2024-02-15. Rows are upserted, so a rerun changes nothing.
"""

from __future__ import annotations

import sys
import time

from operation_patterns.data_model_versioning.tables import (
    DWH_IRIS,
    FEATURES,
    METADATA,
    DatabaseSettings,
)
from patternkit.db import create_tables, make_engine, show_url, upsert
from patternkit.models import load_dataset


class SeedSettings(DatabaseSettings):
    service_name: str = "seed"


def iris_rows() -> list[dict[str, object]]:
    X, y, _, classes = load_dataset("iris")
    return [
        {"id": i + 1, **{n: round(float(v), 4) for n, v in zip(FEATURES, row, strict=True)},
         "species": classes[int(label)], "label": int(label),
         "collected_on": "2024-02-15" if (i + 1) % 3 == 0 else "2024-01-15"}
        for i, (row, label) in enumerate(zip(X, y, strict=True))
    ]


def main() -> int:
    cfg = SeedSettings()
    started = time.perf_counter()
    engine = make_engine(cfg.database_url)
    try:
        create_tables(engine, METADATA)
        rows = iris_rows()
        upsert(engine, DWH_IRIS, rows)
        where = show_url(engine)
    finally:
        engine.dispose()
    print(f"seeded {len(rows)} flowers into {DWH_IRIS.name} at {where} in "
          f"{time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
