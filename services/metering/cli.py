"""`billing`: the operator's and newcomer's command line.

It talks to the running system the way everyone else does: it publishes grant commands and
sample usage events to the topics, and reads balances and ledgers from the HTTP API.

  billing grant org_acme 1000 --reason plan_start      # a period starts with 1000 credits
  billing usage org_acme --credits 7 --count 3         # three agent messages of 7 credits
  billing balance org_acme                             # the credit bar
  billing ledger org_acme                              # newest entries first
  billing authorize org_acme --estimate 20             # the chat gateway's question
  billing dead-letters agent.usage                     # what consumers refused, and why
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from uuid import uuid4

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from shared.calendar import add_months
from shared.clock import SystemClock
from shared.events import (
    AgentMessageProcessed,
    AgentMessageProcessedV1,
    CreditGrantRequested,
    CreditGrantRequestedV1,
    Event,
    GrantReason,
)
from shared.kafka import make_broker
from shared.topics import REGISTRY, spec_for

from .settings import DEV_API_TOKEN, MeteringSettings

PRODUCER = "billing-cli"


def _api_url(settings: MeteringSettings) -> str:
    return os.environ.get("METERING_URL", f"http://127.0.0.1:{settings.http_port}")


async def _publish(settings: MeteringSettings, events: list[Event]) -> None:
    broker = make_broker(settings, client_id=PRODUCER)
    await broker.connect()
    try:
        for event in events:
            await broker.publish(
                event.to_bytes(),
                spec_for(type(event)).topic(settings.topic_prefix),
                key=event.key,
                headers={"content-type": "application/json", "event-type": event.type},
            )
    finally:
        await broker.stop()


def grant(args: argparse.Namespace, settings: MeteringSettings) -> int:
    now = SystemClock().now()
    reason = GrantReason(args.reason)
    period_start = args.period_start or (now if reason.starts_period else None)
    period_end = args.period_end or (add_months(period_start, 1) if reason.starts_period else None)
    period_key = args.period_key or (
        f"cli:{reason.value}:{period_start.isoformat()}"
        if reason.starts_period
        else f"cli:{uuid4()}"
    )
    event = CreditGrantRequestedV1.new(
        organisation_id=args.organisation,
        producer=PRODUCER,
        occurred_at=now,
        data=CreditGrantRequested(
            period_key=period_key,
            amount=args.amount,
            reason=reason,
            period_start=period_start,
            period_end=period_end,
            plan=args.plan,
            note=args.note,
        ),
    )
    asyncio.run(_publish(settings, [event]))
    print(f"published {event.type} {event.event_id} (period key {period_key!r})")
    return 0


def usage(args: argparse.Namespace, settings: MeteringSettings) -> int:
    now = SystemClock().now()
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
    asyncio.run(_publish(settings, events))
    print(
        f"published {len(events)} usage event(s) of {args.credits} credits for {args.organisation}"
    )
    return 0


def _call(
    settings: MeteringSettings,
    method: str,
    path: str,
    *,
    params: dict | None = None,
    body: dict | None = None,
) -> int:
    token = os.environ.get("METERING_API_TOKEN", DEV_API_TOKEN)
    try:
        response = httpx.request(
            method,
            f"{_api_url(settings)}{path}",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
    except httpx.HTTPError as exc:
        print(f"cannot reach metering at {_api_url(settings)}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1


def balance(args: argparse.Namespace, settings: MeteringSettings) -> int:
    return _call(settings, "GET", f"/v1/organisations/{args.organisation}/credits")


def ledger(args: argparse.Namespace, settings: MeteringSettings) -> int:
    params = {"limit": args.limit, **({"before": args.before} if args.before else {})}
    return _call(settings, "GET", f"/v1/organisations/{args.organisation}/ledger", params=params)


def authorize(args: argparse.Namespace, settings: MeteringSettings) -> int:
    body = {
        "organisation_id": args.organisation,
        "member_id": args.member,
        "message_id": args.message or f"msg_{uuid4().hex[:12]}",
        "agent_id": args.agent,
        **({"estimate": args.estimate} if args.estimate is not None else {}),
    }
    return _call(settings, "POST", "/v1/authorizations", body=body)


def release(args: argparse.Namespace, settings: MeteringSettings) -> int:
    return _call(settings, "POST", f"/v1/authorizations/{args.authorization_id}/release")


def dead_letters(args: argparse.Namespace, settings: MeteringSettings) -> int:
    async def read() -> list[dict]:
        topic = f"{settings.topic_prefix}{args.topic}.dlq"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
            if not partitions:
                return []
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[dict] = []

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in partitions])

            while await behind():
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for r in records:
                        headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
                        found.append(
                            {
                                "reason": headers.get("dlq.reason"),
                                "detail": headers.get("dlq.detail"),
                                "original": f"{headers.get('dlq.original_topic')}"
                                f"[{headers.get('dlq.original_partition')}]"
                                f"@{headers.get('dlq.original_offset')}",
                                "parked_at": headers.get("dlq.parked_at"),
                                "value": (r.value or b"")[:300].decode("utf-8", "replace"),
                            }
                        )
            return found[-args.limit :]
        finally:
            await consumer.stop()

    for item in asyncio.run(read()):
        print(json.dumps(item))
    return 0


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a timezone, e.g. 2026-12-01T00:00:00+00:00")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="billing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("grant", help="publish a credit grant command")
    p.add_argument("organisation")
    p.add_argument("amount", type=int)
    p.add_argument("--reason", choices=[r.value for r in GrantReason], default="manual_adjustment")
    p.add_argument(
        "--period-key", help="idempotency key; the same key for an organisation applies once"
    )
    p.add_argument("--period-start", type=_instant)
    p.add_argument("--period-end", type=_instant, help="default: one month after the start")
    p.add_argument("--plan")
    p.add_argument("--note")
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

    p = commands.add_parser("dead-letters", help="show what consumers parked, and why")
    p.add_argument("topic", choices=[spec.name for spec in REGISTRY])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=dead_letters)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, MeteringSettings())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        print(f"refused: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
