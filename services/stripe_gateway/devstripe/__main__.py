"""`python -m services.stripe_gateway.devstripe --port 8420`: devstripe (see `app`)."""

from __future__ import annotations

import argparse
import os

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
    parser.add_argument("--public-url", help="where browsers reach it (default: http://HOST:PORT)")
    parser.add_argument(
        "--webhook",
        metavar="URL",
        default=os.environ.get("DEVSTRIPE_WEBHOOK_URL"),
        help="an endpoint to deliver events to from the start (env DEVSTRIPE_WEBHOOK_URL), "
        "signed with DEVSTRIPE_WEBHOOK_SECRET",
    )
    args = parser.parse_args()
    webhooks = {}
    if args.webhook:
        secret = os.environ.get("DEVSTRIPE_WEBHOOK_SECRET")
        if not secret:
            parser.error("--webhook needs DEVSTRIPE_WEBHOOK_SECRET")
        webhooks["webhook"] = (args.webhook, secret)
    configure_logging("INFO", service="devstripe")
    uvicorn.run(
        create_app(
            args.public_url or f"http://{args.host}:{args.port}",
            retry_seconds=args.retry_seconds,
            retry_attempts=args.retry_attempts,
            frozen_clock=args.frozen_clock,
            webhooks=webhooks,
        ),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
