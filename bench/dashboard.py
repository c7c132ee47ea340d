"""Live pages: many Billing pages open on the dashboard (its own process), each a server-sent
event stream; a balance change is published for each organisation (what metering announces),
and every page's update is timed from the publish until it arrives. Beside it, in the same
run, the same with one open page."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.dashboard.app import SERVICE
from services.metering.app import SERVICE as METERING
from shared import identity
from shared.events.members import MemberJoinedV1, MemberRole, MemberState, MemberStatus
from shared.identity import IDENTITY_HEADER
from shared.topics import CREDIT_BALANCE, WORKSPACE_MEMBERS, ensure_topics

from .httpload import latencies
from .process import ServiceProcess


def _balance(organisation: str, balance: int, revision: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "credit_balance.changed.v1",
            "organisation_id": organisation,
            "occurred_at": now,
            "producer": "metering",
            "data": {
                "balance": balance,
                "allotment": 1000,
                "used": 1000 - balance,
                "percent_left": balance * 100 // 1000,
                "level": "normal" if balance > 200 else "low",
                "revision": revision,
                "period_start": now,
                "renews_at": None,
            },
        }
    )


def _now() -> datetime:
    return datetime.now(UTC)


class Stream:
    """One open page's event stream, read with plain asyncio (a lean client)."""

    def __init__(self, port: int, organisation: str, member: str) -> None:
        self.port, self.organisation, self.member = port, organisation, member
        self.views = 0
        self.updated = asyncio.Event()
        self.at = 0.0

    async def run(self, opened: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            (
                "GET /billing/stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                f"{IDENTITY_HEADER}: {identity.sign(self.organisation, self.member, _now())}"
                "\r\n\r\n"
            ).encode()
        )
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"event: view"):
                    self.views += 1
                    if self.views == 1:
                        opened.set()
                    else:
                        self.at = time.perf_counter()
                        self.updated.set()
        finally:
            writer.close()


async def _pages(kafka: str, port: int, prefix: str, pages: int, organisations: int) -> dict:
    orgs = [f"org_live{n}" for n in range(organisations)]
    topic = CREDIT_BALANCE.topic(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=0)
    await producer.start()
    try:
        # every organisation known, with a first balance and its members (a page each), before
        # the pages open
        members = WORKSPACE_MEMBERS.topic(prefix)
        for org in orgs:
            await producer.send(topic, _balance(org, 1000, 1), key=org.encode())
            for n in range(-(-pages // organisations)):
                joined = MemberJoinedV1.new(
                    organisation_id=org,
                    producer="bench",
                    occurred_at=_now(),
                    data=MemberState(
                        member_id=f"member_bench{n}",
                        role=MemberRole.MEMBER,
                        status=MemberStatus.ACTIVE,
                        sequence=1,
                    ),
                )
                await producer.send(members, joined.to_bytes(), key=joined.key)
        await producer.flush()
        await asyncio.sleep(2)
        streams = [
            Stream(port, orgs[n % organisations], f"member_bench{n // organisations}")
            for n in range(pages)
        ]
        opened = [asyncio.Event() for _ in streams]
        tasks = [asyncio.create_task(s.run(o)) for s, o in zip(streams, opened, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
        await asyncio.sleep(0.5)
        published: dict[str, float] = {}
        for org in orgs:
            published[org] = time.perf_counter()
            await producer.send_and_wait(topic, _balance(org, 150, 2), key=org.encode())
        await asyncio.wait_for(asyncio.gather(*(s.updated.wait() for s in streams)), 30)
        delays = [(s.at - published[s.organisation]) * 1000 for s in streams]
        for task in tasks:
            task.cancel()
    finally:
        await producer.stop()
    return {
        "pages": pages,
        "organisations": organisations,
        **latencies(delays, digits=1),
        "within_1s": sum(1 for x in delays if x <= 1000),
    }


async def live_pages(
    kafka: str, database: str, *, pages: int, organisations: int
) -> dict[str, Any]:
    """The dashboard with metering beside it (each page's usage is read from metering's API)."""
    found = []
    for count, orgs in ((pages, organisations), (1, 1)):
        schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
        await ensure_topics(kafka, prefix)
        async with ServiceProcess(
            "services.metering", METERING.env_prefix, kafka, database, f"{schema}_m", prefix
        ) as metering:
            usage = {"DASHBOARD_METERING_URL": f"http://127.0.0.1:{metering.port}"}
            async with ServiceProcess(
                "services.dashboard",
                SERVICE.env_prefix,
                kafka,
                database,
                schema,
                prefix,
                extra=usage,
            ) as dashboard:
                found.append(await _pages(kafka, dashboard.port, prefix, count, orgs))
    return {"many": found[0], "one": found[1]}
