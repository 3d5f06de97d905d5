"""The warm-up job of S9: copies chosen items from the DWH table into the feature cache.

It runs once at deploy time, before the proxy takes traffic (the `warmup` one-shot of the
topology, ids from `WARMUP_IDS`), and again whenever a scheduler or an operator asks:
`python -m serving_patterns.data_cache.warmup --ids 1-10 42`. Like any batch job it reads the
table in bulk, one SQL query per `BATCH_SIZE` ids, not through the per-item API; each row is
stored with the proxy's guarded fill, so a row updated while the job runs is never cached in
its old form. It exits non-zero when the DWH or Redis fails, so a scheduler can retry it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
import redis
from pydantic import Field
from sqlalchemy.exc import SQLAlchemyError

from patternkit.db import make_engine
from serving_patterns.data_cache.cache import FILL_LUA, item_key, stamp_key, stamp_text
from serving_patterns.data_cache.items import MAX_ID, DatabaseSettings, read_items


class WarmupSettings(DatabaseSettings):
    """What to warm and where: the DWH, the cache, the entries' TTL and the ids."""

    service_name: str = "warmup"
    cache_redis_url: str = Field(..., description="Redis that holds the cached features")
    cache_ttl_s: float = Field(300.0, gt=0, description="lifetime of a warmed item")
    warmup_ids: str = Field("", description="ids and ranges, e.g. '1-10,42'")
    batch_size: int = Field(500, gt=0, le=10_000, description="ids per SQL query")


def parse_ids(specs: list[str]) -> list[int]:
    """'1-3,7' and '9' -> [1, 2, 3, 7, 9]; a bad spec is a ValueError naming it."""
    ids: set[int] = set()
    for spec in specs:
        for part in spec.replace(",", " ").split():
            first, dash, last = part.partition("-")
            try:
                low, high = int(first), int(last if dash else first)
            except ValueError:
                raise ValueError(f"{part!r} is not an id or a range like 1-10") from None
            if not 1 <= low <= high <= MAX_ID:
                raise ValueError(f"{part!r}: ids run from 1 to {MAX_ID}, low to high")
            ids.update(range(low, high + 1))
    return sorted(ids)


def warm(cfg: WarmupSettings, ids: list[int]) -> dict[str, Any]:
    """Read `ids` from the DWH in batches and cache each row; counts of what happened."""
    cache = redis.Redis.from_url(cfg.cache_redis_url, socket_timeout=5, socket_connect_timeout=5)
    fill = cache.register_script(FILL_LUA)
    engine = make_engine(cfg.database_url)
    ttl_ms = max(1, round(cfg.cache_ttl_s * 1000))
    report: dict[str, Any] = {"requested": len(ids), "stored": 0, "refused": 0, "queries": 0}
    missing: list[int] = []
    try:
        for start in range(0, len(ids), cfg.batch_size):
            batch = ids[start:start + cfg.batch_size]
            # the stamps first: a write after this point makes the fill below refuse its row
            stamps = dict(zip(batch, cache.mget([stamp_key(i) for i in batch]), strict=True))
            rows = read_items(engine, batch)
            report["queries"] += 1
            found = {row["id"] for row in rows}
            missing += [i for i in batch if i not in found]
            pipe = cache.pipeline(transaction=False)
            for row in rows:
                fill(keys=[item_key(row["id"]), stamp_key(row["id"])],
                     args=[stamp_text(stamps[row["id"]]), orjson.dumps(row), ttl_ms],
                     client=pipe)
            stored = sum(1 for ok in pipe.execute() if ok)
            report["stored"] += stored
            report["refused"] += len(rows) - stored
    finally:
        cache.close()
        engine.dispose()
    report["missing"] = len(missing)
    report["missing_ids"] = missing[:20]  # enough to see what was wrong
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving_patterns.data_cache.warmup",
                                     description=__doc__)
    parser.add_argument("--ids", nargs="+", help="ids and ranges to warm (default: WARMUP_IDS)")
    args = parser.parse_args(argv)
    cfg = WarmupSettings()
    try:
        ids = parse_ids(args.ids if args.ids is not None else [cfg.warmup_ids])
    except ValueError as exc:
        parser.error(str(exc))
    if not ids:
        print("warm-up: no ids given (--ids or WARMUP_IDS); nothing to do", flush=True)
        return 0
    started = time.perf_counter()
    try:
        report = warm(cfg, ids)
    except redis.RedisError as exc:
        print(f"warm-up failed: Redis {cfg.cache_redis_url}: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    except SQLAlchemyError as exc:
        print(f"warm-up failed: DWH: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    report["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    print(f"warm-up: {orjson.dumps(report).decode()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
