"""The seat service's `billing` commands (see `shared.cli`):

  billing seats org_acme                      # seats used, the limit, members and roles
  billing seat-check org_acme [--member m1]   # may one more member be added?

They call the service's HTTP API at `SEATS_URL` (default: http://127.0.0.1:<SEATS_HTTP_PORT>).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from shared.cli.client import CliSettings, call

from .settings import SeatSettings


def _api(method: str, path: str, **kwargs: Any) -> int:
    default = f"http://127.0.0.1:{SeatSettings.model_fields['http_port'].default}"
    url = os.environ.get("SEATS_URL", default)
    return call(url, CliSettings().api_token, method, path, **kwargs)


def show(args: argparse.Namespace) -> int:
    return _api("GET", f"/v1/organisations/{args.organisation}/seats")


def seat_check(args: argparse.Namespace) -> int:
    params = {"member_id": args.member} if args.member else None
    return _api("GET", f"/v1/organisations/{args.organisation}/seat-check", params=params)


def register(commands: Any) -> None:
    """Add the seat service's commands to `billing`."""
    p = commands.add_parser("seats", help="show an organisation's seats and members")
    p.add_argument("organisation")
    p.set_defaults(run=show)

    p = commands.add_parser("seat-check", help="may the organisation add one more member?")
    p.add_argument("organisation")
    p.add_argument("--member", help="the member to invite or reactivate")
    p.set_defaults(run=seat_check)
