"""`python -m services.metering [serve|migrate]`."""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

from shared.logging import configure_logging

from .app import SERVICE, create_app, migrate
from .settings import MeteringSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering")
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "migrate"))
    args = parser.parse_args()
    settings = MeteringSettings()
    configure_logging(settings.log_level, service=SERVICE)
    if args.command == "migrate":
        applied = asyncio.run(migrate(settings))
        print("\n".join(applied) or "schema up to date")
        return
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
