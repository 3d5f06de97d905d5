"""Run a service: `python -m patternkit.serve module:create_app --host H --port P`.

The entry point the runner and the compose files start every app service with: it configures
logging (`patternkit.logs.configure`) and then runs uvicorn on the factory, without uvicorn's
own logging set-up or access log.
"""

from __future__ import annotations

import argparse

import uvicorn

from patternkit.logs import configure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m patternkit.serve", description=__doc__)
    parser.add_argument("app", help="module:factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None)
    args = parser.parse_args(argv)
    configure()
    uvicorn.run(
        args.app, factory=True, host=args.host, port=args.port, log_config=None,
        access_log=False, timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )


if __name__ == "__main__":
    main()
