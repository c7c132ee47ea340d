"""`python -m services.stripe_gateway.devstripe --port 8420`: devstripe (see `app`)."""

from __future__ import annotations

import argparse

import uvicorn

from shared.logging import configure_logging

from .app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.stripe_gateway.devstripe")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=1.0,
        help="first delay before an unacknowledged webhook is sent again (it doubles)",
    )
    parser.add_argument("--retry-attempts", type=int, default=12)
    parser.add_argument(
        "--frozen-clock",
        action="store_true",
        help="time stands still but when moved (a Stripe test clock); default: it runs",
    )
    args = parser.parse_args()
    configure_logging("INFO", service="devstripe")
    uvicorn.run(
        create_app(
            f"http://{args.host}:{args.port}",
            retry_seconds=args.retry_seconds,
            retry_attempts=args.retry_attempts,
            frozen_clock=args.frozen_clock,
        ),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
