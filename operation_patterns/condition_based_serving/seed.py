"""The seed of O7: puts the starting rules file where the proxy reads and watches it, once.

The rules ship beside this module (`rules.yaml`); the seed copies them to `--out` (in the
run directory, compose's volume or a pod's) unless a rules file is already there, so an
operator's edits survive a restart. The proxy then owns nothing but reading it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RULES = Path(__file__).with_name("rules.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operation_patterns.condition_based_serving.seed", description=__doc__
    )
    parser.add_argument("--out", required=True, type=Path, help="where the proxy reads the rules")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        print(f"{out} exists: kept as it is", flush=True)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(RULES, tmp)
    tmp.replace(out)
    print(f"wrote the starting rules to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
