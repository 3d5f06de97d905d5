"""The one-shot trainer of TA2: the training job, in the training environment.

It seeds the DWH table with the iris rows, then trains iris_lr from it with the training code
(`training.py`) into the folder both servers load: `python -m
antipatterns.training_code_in_serving.trainer --dwh {dwh.url} --out {run_dir}/models/iris_lr`.
"""

from __future__ import annotations

import argparse
import json
import sys

from antipatterns.training_code_in_serving.training import seed_dwh, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m antipatterns.training_code_in_serving.trainer", description=__doc__)
    parser.add_argument("--dwh", required=True, help="the DWH's SQLAlchemy URL")
    parser.add_argument("--out", required=True, help="directory for model.onnx + manifest.json")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    print(f"seeded the DWH with {seed_dwh(args.dwh)} rows", flush=True)
    result = train(args.dwh, args.out, version=args.version)
    print(f"trained {result['model']} v{result['version']} from {result['rows_read']} rows in "
          f"{result['seconds']}s: {json.dumps(result['metrics'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
