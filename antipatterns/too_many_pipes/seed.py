"""TA3's seed: writes the two file stores, once: a SQLite table of sepal rows and a CSV file
of whole iris rows (the web API serves the petal rows)."""

from __future__ import annotations

import argparse
import csv
import sqlite3
from pathlib import Path

from patternkit.models import load_dataset


def write_sources(folder: Path) -> tuple[Path, Path]:
    X, y, _, classes = load_dataset("iris")
    folder.mkdir(parents=True, exist_ok=True)
    db, table = folder / "iris.db", folder / "iris.csv"
    db.unlink(missing_ok=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sepal (id INTEGER PRIMARY KEY, sepal_length REAL, "
                     "sepal_width REAL, species TEXT)")
        conn.executemany("INSERT INTO sepal VALUES (?, ?, ?, ?)",
                         [(i, float(x[0]), float(x[1]), classes[int(c)])
                          for i, (x, c) in enumerate(zip(X, y, strict=True))])
    with table.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "sepal_length", "sepal_width", "petal_length", "petal_width",
                      "species"])
        for i, (x, c) in enumerate(zip(X, y, strict=True)):
            out.writerow([i, *(round(float(v), 2) for v in x), classes[int(c)]])
    return db, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    db, table = write_sources(Path(args.out))
    print(f"wrote {db} and {table}")


if __name__ == "__main__":
    main()
