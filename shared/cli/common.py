"""Commands for every service: what consumers parked (and replaying it), the topic registry,
and `reconcile`, which runs every service's reconciliation step in order."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.events.audit import (
    AUDITED,
    SYSTEM_ORGANISATION,
    ActorKind,
    AuditAction,
    AuditActionV2,
    AuditEntry,
    AuditRecordedV1,
    Outcome,
)
from shared.events.envelope import ORGANISATION_ID_PATTERN
from shared.topics import BILLING_AUDIT, REGISTRY

from .client import PRODUCER, CliSettings, publish, stack_now


@dataclass(frozen=True)
class ReconcileStep:
    order: int
    title: str
    run: Callable[[str | None], int]
    """Takes the organisation (None: all); returns an exit code."""


RECONCILE_STEPS: list[ReconcileStep] = []


def add_reconcile_step(order: int, title: str, run: Callable[[str | None], int]) -> None:
    """A service's part of `billing reconcile` (steps run by `order`: Stripe first, then what
    follows from it, then the ledgers)."""
    if all(step.title != title for step in RECONCILE_STEPS):
        RECONCILE_STEPS.append(ReconcileStep(order, title, run))


def register(commands: Any) -> None:
    p = commands.add_parser("dead-letters", help="show what consumers parked, and why")
    p.add_argument("topic", choices=[spec.name for spec in REGISTRY])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--reason", help="only those parked for this reason")
    p.add_argument(
        "--replay",
        action="store_true",
        help="publish them again on their topic (after fixing the cause); consumers are "
        "idempotent, so what was applied meanwhile is not applied twice",
    )
    p.set_defaults(run=dead_letters)

    p = commands.add_parser(
        "reconcile", help="compare with Stripe and repair; check every wallet against its ledger"
    )
    p.add_argument("organisation", nargs="?", help="one organisation (default: all)")
    p.set_defaults(run=reconcile)

    p = commands.add_parser(
        "audit", help="the audit log: owners' and operators' actions, newest last"
    )
    p.add_argument("--organisation", help="one organisation's entries")
    p.add_argument("--action", choices=[a.value for a in AuditActionV2])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=audit)

    p = commands.add_parser("topics", help="list the registered topics, their keys and schemas")
    p.set_defaults(run=topics)


def topics(args: argparse.Namespace) -> int:
    for spec in REGISTRY:
        schemas = ", ".join(s.type_name for s in spec.schemas)
        print(f"{spec.name:<28} {spec.partitions:>2} partitions  key {spec.key}  {schemas}")
        print(
            f"{'':<28} written by {', '.join(spec.producers)}; read by {', '.join(spec.consumers)}"
        )
    return 0


def reconcile(args: argparse.Namespace) -> int:
    failed = 0
    for step in sorted(RECONCILE_STEPS, key=lambda s: s.order):
        print(f"# {step.title}")
        failed |= step.run(args.organisation)
    return failed


def dead_letters(args: argparse.Namespace) -> int:
    settings = CliSettings()
    found = asyncio.run(_read_dead_letters(settings, args.topic, args.limit, args.reason))
    for item in found:
        print(json.dumps({k: v for k, v in item.items() if not k.startswith("_")}))
    if args.replay and found:
        asyncio.run(_replay(settings, found))
        asyncio.run(publish(settings, [_replayed(item) for item in found]))
        print(f"replayed {len(found)} on their topics")
    return 0


def _replayed(item: dict) -> AuditRecordedV1:
    """The audit entry of one replay from the command line."""
    key = (item["_key"] or b"").decode("utf-8", "replace")
    user = re.sub(r"[^A-Za-z0-9_.-]", "", getpass.getuser())[:32] or "unknown"
    return AuditRecordedV1.new(
        organisation_id=key if re.fullmatch(ORGANISATION_ID_PATTERN, key) else SYSTEM_ORGANISATION,
        producer=PRODUCER,
        occurred_at=stack_now(),
        data=AuditEntry(
            service=PRODUCER,
            actor=f"operator:cli:{user}",
            actor_kind=ActorKind.OPERATOR,
            action=AuditAction.REPLAY,
            target=item["original"][:128],
            request_id=f"req_{uuid.uuid4().hex[:16]}",
            outcome=Outcome.SUCCEEDED,
            detail=f"parked for {item['reason']}"[:500],
        ),
    )


def audit(args: argparse.Namespace) -> int:
    settings = CliSettings()
    topic = BILLING_AUDIT.topic(settings.topic_prefix)
    rows = []
    for record in asyncio.run(read_all(settings, topic)):
        try:
            event = AUDITED.validate_json(record.value or b"")
        except ValueError:
            continue
        if args.organisation and event.organisation_id != args.organisation:
            continue
        if args.action and event.data.action.value != args.action:
            continue
        rows.append(event)
    rows.sort(key=lambda e: e.occurred_at)
    for e in rows[-args.limit :]:
        d = e.data
        print(
            f"{e.occurred_at:%Y-%m-%d %H:%M:%S}  {e.organisation_id:<20} {d.actor:<28} "
            f"{d.action.value:<16} {d.outcome.value:<9} {d.target or '-':<20} {d.request_id}  "
            f"{d.detail}"
        )
    return 0


async def _replay(settings: CliSettings, items: list[dict]) -> None:
    """Publish the parked records again on their original topic, key and bytes unchanged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for item in items:
            await producer.send_and_wait(
                item["_topic"],
                value=item["_value"],
                key=item["_key"],
                headers=[("dlq.replayed_from", item["original"].encode())],
            )
    finally:
        await producer.stop()


async def read_all(settings: CliSettings, topic: str) -> list[ConsumerRecord]:
    """Every record of `topic` up to its end offsets when asked."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[ConsumerRecord] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                found += records
        return found
    finally:
        await consumer.stop()


async def _read_dead_letters(
    settings: CliSettings, name: str, limit: int, reason: str | None = None
) -> list[dict]:
    found: list[dict] = []
    for r in await read_all(settings, f"{settings.topic_prefix}{name}.dlq"):
        headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
        if reason is not None and headers.get("dlq.reason") != reason:
            continue
        found.append(
            {
                "reason": headers.get("dlq.reason"),
                "detail": headers.get("dlq.detail"),
                "original": f"{headers.get('dlq.original_topic')}"
                f"[{headers.get('dlq.original_partition')}]"
                f"@{headers.get('dlq.original_offset')}",
                "consumer_group": headers.get("dlq.consumer_group"),
                "parked_at": headers.get("dlq.parked_at"),
                "value": (r.value or b"")[:300].decode("utf-8", "replace"),
                "_topic": headers.get("dlq.original_topic"),
                "_key": r.key,
                "_value": r.value,
            }
        )
    return found[-limit:]
