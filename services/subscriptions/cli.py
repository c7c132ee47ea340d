"""The subscription service's `billing` commands (see `shared.cli`):

  billing subscription org_acme                                  # plan, periods, pending
  billing enterprise org_acme --credits 750000 --seats 200       # an Enterprise contract

They call the service's HTTP API at `SUBSCRIPTIONS_URL` (default:
http://127.0.0.1:<SUBSCRIPTIONS_HTTP_PORT>).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from shared.cli.client import CliSettings, call
from shared.cli.common import add_reconcile_step

from .settings import SubscriptionSettings


def _api(method: str, path: str, **kwargs: Any) -> int:
    default = f"http://127.0.0.1:{SubscriptionSettings.model_fields['http_port'].default}"
    url = os.environ.get("SUBSCRIPTIONS_URL", default)
    return call(url, CliSettings().api_token, method, path, **kwargs)


def show(args: argparse.Namespace) -> int:
    return _api("GET", f"/v1/organisations/{args.organisation}/subscription")


def enterprise(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"monthly_credits": args.credits, "seat_limit": args.seats}
    if args.features:
        body["features"] = [f.strip() for f in args.features.split(",") if f.strip()]
    return _api("PUT", f"/v1/organisations/{args.organisation}/enterprise", body=body)


def reconcile(organisation: str | None) -> int:
    """Paid organisations against what the gateway holds of Stripe."""
    return _api("POST", "/v1/reconciliations", body={"organisation_id": organisation})


def register(commands: Any) -> None:
    """Add the subscription service's commands to `billing`."""
    p = commands.add_parser("subscription", help="show an organisation's subscription")
    p.add_argument("organisation")
    p.set_defaults(run=show)

    p = commands.add_parser("enterprise", help="put an organisation on Enterprise, its terms")
    p.add_argument("organisation")
    p.add_argument("--credits", type=int, required=True, help="monthly credit allotment")
    p.add_argument("--seats", type=int, help="seat limit (default: unlimited)")
    p.add_argument("--features", help="comma-separated (default: the catalogue's)")
    p.set_defaults(run=enterprise)

    add_reconcile_step(20, "subscriptions: organisations against what Stripe holds", reconcile)
