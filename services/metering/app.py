"""Wiring: settings, database, broker, consumers, outbox relay and the HTTP app, started and
stopped together. `create_app()` is what uvicorn serves; tests call it with their own settings
and clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
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
from shared.http import BodySizeLimit, Problem, install_problem_handlers
from shared.kafka import make_broker
from shared.logging import get_logger
from shared.runtime import tune_gc, watch_gc_pauses, watch_loop_lag
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS, TopicSpec, ensure_topics

from .authorizer import Authorizer
from .domain.credits import CreditPolicy
from .handlers import http, kafka
from .service import Metering
from .settings import DEV_API_TOKEN, MeteringSettings

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
    authorizer: Authorizer
    consumers: tuple[BatchConsumer, ...]
    tasks: tuple[asyncio.Task[None], ...]

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

        authorizer = Authorizer(
            pool,
            clock,
            hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
            topic_prefix=settings.topic_prefix,
            lanes=settings.authorization_lanes,
        )
        consumers: tuple[BatchConsumer, ...] = ()
        if settings.run_consumers:
            usage = consumer("usage", AGENT_USAGE, metering.record_usage, settings.write_lanes)
            grants = consumer("grants", CREDIT_GRANT_REQUESTS, metering.apply_grants)
            kafka.register(broker, settings, usage=usage, grants=grants)
            consumers = (usage, grants)
            await broker.start()
        else:
            await broker.connect()
        relay = outbox.OutboxRelay(
            pool,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            dsn=dsn,
            schema=settings.db_schema,
            batch_size=settings.outbox_batch_size,
        )
        tasks = (
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(
                authorizer.run_sweeper(settings.hold_sweep_seconds), name="hold-sweeper"
            ),
            asyncio.create_task(watch_loop_lag(), name="loop-lag"),
        )
        tune_gc()
        watch_gc_pauses()
        log.info(
            "metering started",
            kafka=settings.kafka_bootstrap_servers,
            schema=settings.db_schema,
            topic_prefix=settings.topic_prefix,
            consumer_groups=[settings.group_id(c.name) for c in consumers],
        )
        if settings.api_tokens.get_secret_value() == DEV_API_TOKEN:
            log.warning("the development API token is accepted; set METERING_API_TOKENS")
        return cls(settings, pool, broker, metering, authorizer, consumers, tasks)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.authorizer.close()
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
        summary="Credit authorization for the chat gateway, wallets, the credit ledger and the "
        "credit bar of each organisation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
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
