"""The Stripe gateway's `billing` commands (see `shared.cli`):

  billing stripe-inbox --status parked      # webhook events that need a look
  billing stripe-replay evt_1Pgc76B7WZ01    # process a parked event again
  billing reconcile [org_acme]              # first step: Stripe against the gateway

They call the gateway's HTTP API at `STRIPE_GATEWAY_URL` (default:
http://127.0.0.1:<STRIPE_GATEWAY_HTTP_PORT>).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from shared.cli.client import CliSettings, call
from shared.cli.common import add_reconcile_step

from .settings import StripeGatewaySettings


def _api(method: str, path: str, **kwargs: Any) -> int:
    default = f"http://127.0.0.1:{StripeGatewaySettings.model_fields['http_port'].default}"
    url = os.environ.get("STRIPE_GATEWAY_URL", default)
    return call(url, CliSettings().api_token, method, path, **kwargs)


def inbox(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    return _api("GET", "/v1/inbox", params=params)


def replay(args: argparse.Namespace) -> int:
    return _api("POST", f"/v1/inbox/{args.event_id}/replay")


def reconcile(organisation: str | None) -> int:
    """Stripe's subscriptions, open checkouts and seat quantities against the gateway's."""
    return _api("POST", "/v1/reconciliations", body={"organisation_id": organisation})


def register(commands: Any) -> None:
    """Add the gateway's commands to `billing`."""
    p = commands.add_parser("stripe-inbox", help="list received Stripe webhook events")
    p.add_argument("--status", choices=["pending", "done", "parked", "ignored"])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=inbox)

    p = commands.add_parser("stripe-replay", help="process a parked Stripe event again")
    p.add_argument("event_id")
    p.set_defaults(run=replay)

    add_reconcile_step(10, "stripe gateway: Stripe against what the gateway holds", reconcile)
