"""Commands for every service: what consumers parked, and the topic registry."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.topics import REGISTRY

from .client import CliSettings


def register(commands: Any) -> None:
    p = commands.add_parser("dead-letters", help="show what consumers parked, and why")
    p.add_argument("topic", choices=[spec.name for spec in REGISTRY])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=dead_letters)

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


def dead_letters(args: argparse.Namespace) -> int:
    settings = CliSettings()
    for item in asyncio.run(_read_dead_letters(settings, args.topic, args.limit)):
        print(json.dumps(item))
    return 0


async def _read_dead_letters(settings: CliSettings, name: str, limit: int) -> list[dict]:
    topic = f"{settings.topic_prefix}{name}.dlq"
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
                            "consumer_group": headers.get("dlq.consumer_group"),
                            "parked_at": headers.get("dlq.parked_at"),
                            "value": (r.value or b"")[:300].decode("utf-8", "replace"),
                        }
                    )
        return found[-limit:]
    finally:
        await consumer.stop()
