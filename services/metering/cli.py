"""Metering's `billing` commands (see `shared.cli`):

  billing grant org_acme 1000 --reason plan_start      # a period starts with 1000 credits
  billing grant org_acme 500 --reason promotion --expires-in-days 7   # a bucket that expires
  billing usage org_acme --credits 7 --count 3         # three agent messages of 7 credits
  billing balance org_acme                             # the credit bar
  billing ledger org_acme                              # newest entries first
  billing authorize org_acme --estimate 20             # the chat gateway's question
  billing release <authorization id>                   # give a hold's credits back

Grants and usage are published to the topics; the rest calls metering's HTTP API at
`METERING_URL` (default: http://127.0.0.1:<METERING_HTTP_PORT>).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from shared.calendar import add_months
from shared.cli.client import PRODUCER, CliSettings, call, publish, stack_now
from shared.cli.common import add_reconcile_step
from shared.events import (
    AgentMessageProcessed,
    AgentMessageProcessedV1,
    CreditGrantRequestedV2,
    CreditGrantV2,
    GrantReasonV2,
)

from .settings import MeteringSettings


def _api(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    url = os.environ.get("METERING_URL", f"http://127.0.0.1:{MeteringSettings().http_port}")
    return call(url, CliSettings().api_token, method, path, **kwargs)


def grant(args: argparse.Namespace) -> int:
    now = stack_now()
    reason = GrantReasonV2(args.reason)
    period_start = args.period_start or (now if reason.starts_period else None)
    period_end = args.period_end or (add_months(period_start, 1) if reason.starts_period else None)
    period_key = args.period_key or (
        f"cli:{reason.value}:{period_start.isoformat()}"
        if reason.starts_period
        else f"cli:{uuid4()}"
    )
    expires_at = args.expires_at or (
        now + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    )
    event = CreditGrantRequestedV2.new(
        organisation_id=args.organisation,
        producer=PRODUCER,
        occurred_at=now,
        data=CreditGrantV2(
            period_key=period_key,
            amount=args.amount,
            reason=reason,
            period_start=period_start,
            period_end=period_end,
            plan=args.plan,
            note=args.note,
            expires_at=expires_at,
            priority=args.priority,
            rollover_cap=args.rollover_cap,
            clawback_of=args.clawback_of,
        ),
    )
    asyncio.run(publish(CliSettings(), [event]))
    print(f"published {event.type} {event.event_id} (period key {period_key!r})")
    return 0


def usage(args: argparse.Namespace) -> int:
    now = stack_now()
    conversation = args.conversation or f"conv_{uuid4().hex[:8]}"
    events = [
        AgentMessageProcessedV1.new(
            organisation_id=args.organisation,
            producer=PRODUCER,
            occurred_at=now,
            data=AgentMessageProcessed(
                member_id=args.member,
                agent_id=args.agent,
                conversation_id=conversation,
                message_id=f"msg_{uuid4().hex[:12]}",
                credits=args.credits,
            ),
        )
        for _ in range(args.count)
    ]
    asyncio.run(publish(CliSettings(), events))
    print(
        f"published {len(events)} usage event(s) of {args.credits} credits for {args.organisation}"
    )
    return 0


def balance(args: argparse.Namespace) -> int:
    return _api(args, "GET", f"/v1/organisations/{args.organisation}/credits")


def ledger(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"before": args.before} if args.before else {})}
    return _api(args, "GET", f"/v1/organisations/{args.organisation}/ledger", params=params)


def authorize(args: argparse.Namespace) -> int:
    body = {
        "organisation_id": args.organisation,
        "member_id": args.member,
        "message_id": args.message or f"msg_{uuid4().hex[:12]}",
        "agent_id": args.agent,
        **({"estimate": args.estimate} if args.estimate is not None else {}),
    }
    return _api(args, "POST", "/v1/authorizations", body=body)


def release(args: argparse.Namespace) -> int:
    return _api(args, "POST", f"/v1/authorizations/{args.authorization_id}/release")


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a timezone, e.g. 2026-12-01T00:00:00+00:00")
    return value


def ledger_check(organisation: str | None) -> int:
    """Every wallet (or one) against the sum of its ledger entries."""
    url = os.environ.get("METERING_URL", f"http://127.0.0.1:{MeteringSettings().http_port}")
    return call(
        url,
        CliSettings().api_token,
        "POST",
        "/v1/ledger-checks",
        body={"organisation_id": organisation},
    )


def register(commands: Any) -> None:
    """Add metering's commands to `billing`."""
    add_reconcile_step(30, "metering: every wallet against its ledger", ledger_check)
    p = commands.add_parser("grant", help="publish a credit grant command")
    p.add_argument("organisation")
    p.add_argument("amount", type=int)
    p.add_argument(
        "--reason", choices=[r.value for r in GrantReasonV2], default="manual_adjustment"
    )
    p.add_argument(
        "--period-key", help="idempotency key; the same key for an organisation applies once"
    )
    p.add_argument("--period-start", type=_instant)
    p.add_argument("--period-end", type=_instant, help="default: one month after the start")
    p.add_argument("--plan")
    p.add_argument("--note")
    p.add_argument("--expires-at", type=_instant, help="when the bucket's credits expire")
    p.add_argument("--expires-in-days", type=int, help="or: this many days from now")
    p.add_argument("--priority", type=int, help="0..100; lower is spent first among equals")
    p.add_argument("--rollover-cap", type=int, help="with a period start: credits carried over")
    p.add_argument("--clawback-of", help="with refund_clawback: the grant's period key")
    p.set_defaults(run=grant)

    p = commands.add_parser("usage", help="publish sample usage events, as the agent runtime does")
    p.add_argument("organisation")
    p.add_argument("--credits", type=int, default=5)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--member", default="member_cli")
    p.add_argument("--agent", default="agent_cli")
    p.add_argument("--conversation")
    p.set_defaults(run=usage)

    p = commands.add_parser("balance", help="show an organisation's credits")
    p.add_argument("organisation")
    p.set_defaults(run=balance)

    p = commands.add_parser("ledger", help="show an organisation's ledger, newest first")
    p.add_argument("organisation")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--before", type=int)
    p.set_defaults(run=ledger)

    p = commands.add_parser("authorize", help="ask, as the chat gateway does, to hold credits")
    p.add_argument("organisation")
    p.add_argument("--message", help="message id (the idempotency key); default: a new one")
    p.add_argument("--estimate", type=int, help="credits to hold; default: configured estimate")
    p.add_argument("--member", default="member_cli")
    p.add_argument("--agent", default="agent_cli")
    p.set_defaults(run=authorize)

    p = commands.add_parser("release", help="give a hold's credits back (message never sent)")
    p.add_argument("authorization_id")
    p.set_defaults(run=release)
