"""Wiring: settings, database, broker, consumers, outbox relay and the HTTP app, started and
stopped together. `create_app()` is what uvicorn serves; tests call it with their own settings
and clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from fastapi import FastAPI, Request
from faststream.kafka import KafkaBroker

from shared import outbox
from shared.clock import Clock, SystemClock
from shared.consumer import Apply, BatchConsumer
from shared.db import Migrations, apply_migrations, create_pool
from shared.deadletter import DeadLetters
from shared.events.codec import TopicCodec
from shared.http import Problem, install_problem_handlers
from shared.kafka import make_broker
from shared.logging import get_logger
from shared.runtime import tune_gc
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS, TopicSpec, ensure_topics

from .domain.credits import CreditPolicy
from .handlers import http, kafka
from .service import Metering
from .settings import MeteringSettings

log = get_logger("metering.app")

SERVICE = "metering"
MIGRATIONS = (outbox.MIGRATIONS, Migrations(SERVICE, Path(__file__).parent / "migrations"))


async def migrate(settings: MeteringSettings) -> list[str]:
    return await apply_migrations(
        settings.database_url.get_secret_value(), settings.db_schema, MIGRATIONS
    )


@dataclass
class Runtime:
    settings: MeteringSettings
    pool: asyncpg.Pool
    broker: KafkaBroker
    metering: Metering
    consumers: tuple[BatchConsumer, ...]
    relay: outbox.OutboxRelay
    relay_task: asyncio.Task[None]

    @classmethod
    async def start(cls, settings: MeteringSettings, clock: Clock) -> Runtime:
        dsn = settings.database_url.get_secret_value()
        if settings.migrate_on_start:
            await migrate(settings)
        if settings.kafka_create_topics:
            await ensure_topics(settings.kafka_bootstrap_servers, settings.topic_prefix)
        pool = await create_pool(
            dsn, settings.db_schema, application_name=SERVICE, max_size=settings.db_pool_size
        )
        broker = make_broker(settings, client_id=SERVICE)
        metering = Metering(
            pool,
            clock,
            CreditPolicy(low_percent=settings.low_credit_percent),
            schema=settings.db_schema,
            topic_prefix=settings.topic_prefix,
        )

        def consumer(name: str, spec: TopicSpec, apply: Apply, lanes: int = 1) -> BatchConsumer:
            return BatchConsumer(
                name=name,
                codec=TopicCodec(spec.schemas, max_bytes=settings.max_event_bytes),
                apply=apply,
                dead_letters=DeadLetters(broker, group=settings.group_id(name), clock=clock),
                dead_letter_topic=spec.dead_letter_topic(settings.topic_prefix),
                lanes=lanes,
            )

        usage = consumer("usage", AGENT_USAGE, metering.record_usage, settings.write_lanes)
        grants = consumer("grants", CREDIT_GRANT_REQUESTS, metering.apply_grants)
        kafka.register(broker, settings, usage=usage, grants=grants)
        await broker.start()
        relay = outbox.OutboxRelay(
            pool,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            dsn=dsn,
            schema=settings.db_schema,
            batch_size=settings.outbox_batch_size,
        )
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        tune_gc()
        log.info(
            "metering started",
            kafka=settings.kafka_bootstrap_servers,
            schema=settings.db_schema,
            topic_prefix=settings.topic_prefix,
            consumer_groups=[settings.group_id(c.name) for c in (usage, grants)],
        )
        return cls(settings, pool, broker, metering, (usage, grants), relay, relay_task)

    async def stop(self) -> None:
        self.relay_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.relay_task
        for consumer in self.consumers:
            await consumer.flush()
        await self.broker.stop()
        await self.pool.close()
        log.info("metering stopped")

    def assignments(self) -> dict[str, list[int]]:
        """Partitions this instance owns, per topic."""
        owned: dict[str, list[int]] = {}
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            for tp in consumer.assignment() if consumer is not None else ():
                owned.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(partitions) for topic, partitions in owned.items()}

    async def ready(self) -> bool:
        try:
            await self.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return await self.broker.ping(timeout=2.0)


def create_app(settings: MeteringSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or MeteringSettings()
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, clock)
        try:
            yield
        finally:
            await app.state.runtime.stop()

    app = FastAPI(
        title="Credit metering",
        version="1",
        summary="Wallets, the credit ledger and the credit bar of each organisation.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(http.router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> dict[str, str]:
        """Database and broker reachable."""
        if not await request.app.state.runtime.ready():
            raise Problem(503, "not-ready", "Not ready", "Database or broker unreachable.")
        return {"status": "ready"}

    return app
