"""The skeleton every service runs on, so that a service is its domain, store, handlers and a
few lines of wiring.

A service declares itself with a `Service`: its name, settings class, migrations, HTTP routers
and a `build` function. `build` receives the `Kernel` (settings, clock, database pool) and
wires the service's parts: it declares consumers (`kernel.consume`), background tasks
(`kernel.background`) and what to close at stop (`kernel.on_stop`), and returns the parts the
HTTP handlers use (`request.app.state.parts`).

Start-up order, so that the HTTP API answers as soon as the service can decide:
1. migrations, the database pool, `build`: then the HTTP API serves;
2. in the background: the broker connection and every consumer group, joined concurrently (a
   group join can take a session timeout after a crash); the outbox relay; each retried with
   back-off until it succeeds. Topics are created (when `KAFKA_CREATE_TOPICS`) before the HTTP
   API serves if the broker answers within 5 s, else in the background too.

`/healthz` says the process is up. `/readyz` says whether the service can serve: the database
answers and no partition has been stalled for longer than `stall_grace_seconds`; its body
details the database, the broker and each consumer (partitions stalled, with their lag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import uvicorn
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from shared import audit, clock_control, directory, metrics, outbox
from shared.clock import Clock, MovableClock, SystemClock
from shared.consumer import Apply, BatchConsumer
from shared.db import Migrations, apply_migrations, create_pool, run_alone
from shared.deadletter import DeadLetters
from shared.events.codec import TopicCodec
from shared.failures import Backoff
from shared.http import BodySizeLimit, HotRoute, HotRoutes, install_problem_handlers
from shared.kafka import make_broker
from shared.logging import configure_logging, get_logger
from shared.runtime import tune_gc, watch_gc_pauses, watch_loop_lag
from shared.settings import ServiceSettings
from shared.subscriber import subscribe
from shared.topics import TopicSpec, ensure_topics

log = get_logger("shared.service")

STOP_STEP_SECONDS = 15.0


async def _bounded(step: Awaitable[Any], what: str) -> None:
    """Await one step of a stop, at most `STOP_STEP_SECONDS`; its failure is logged."""
    try:
        await asyncio.wait_for(step, STOP_STEP_SECONDS)
    except TimeoutError:
        log.warning("stop step abandoned", step=what, seconds=STOP_STEP_SECONDS)
    except Exception as exc:
        log.warning("stop step failed", step=what, error=repr(exc))


S = TypeVar("S", bound=ServiceSettings)
P = TypeVar("P")


@dataclass(frozen=True)
class DevResources:
    """What a service's development helpers give it under `make run`."""

    env: dict[str, str] = field(default_factory=dict)
    """Variables set for the service (e.g. where its fake third party listens)."""
    lines: tuple[str, ...] = ()
    """Shown in `make run`'s banner."""


Development = Callable[[Path, dict[str, str], int], AbstractContextManager[DevResources]]
"""`(data directory, environment, the service's HTTP port)` -> a context that runs what the
service needs under `make run` only (a fake Stripe, …) and stops it on exit."""


@dataclass(frozen=True)
class Service(Generic[S, P]):
    """What a service declares; the kernel does the rest."""

    name: str
    """Also the producer name in its events and the client id towards the broker."""
    module: str
    """The package run by `python -m` (`services.metering`)."""
    title: str
    summary: str
    settings: type[S]
    migrations: Path
    build: Callable[[Kernel[S]], Awaitable[P]]
    routers: Sequence[APIRouter] = ()
    hot_routes: Sequence[HotRoute] = ()
    """GET routes answered in front of the framework (`shared.http.HotRoute`)."""
    development: Development | None = None
    directory: bool = False
    """Keeps the member directory's projection (`shared.directory`) in its schema."""
    audit: bool = False
    """Acts for owners or operators: keeps an audit log (`shared.audit`, `kernel.auditor`)."""

    @property
    def env_prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", ""))

    @property
    def port_variable(self) -> str:
        return f"{self.env_prefix}HTTP_PORT"

    @property
    def default_port(self) -> int:
        return int(self.settings.model_fields["http_port"].default)

    @property
    def all_migrations(self) -> tuple[Migrations, ...]:
        return (
            outbox.MIGRATIONS,
            clock_control.MIGRATIONS,
            *((directory.MIGRATIONS,) if self.directory else ()),
            *((audit.MIGRATIONS,) if self.audit else ()),
            Migrations(self.name, self.migrations),
        )

    async def migrate(self, settings: S) -> list[str]:
        return await apply_migrations(
            settings.database_url.get_secret_value(), settings.db_schema, self.all_migrations
        )


@dataclass
class Kernel(Generic[S]):
    """A running service: its settings, clock, pool and broker, its consumers and tasks."""

    service: Service[S, Any]
    settings: S
    clock: Clock
    pool: asyncpg.Pool
    broker: KafkaBroker
    parts: Any = None
    auditor: audit.Auditor | None = None
    consumers: list[BatchConsumer] = field(default_factory=list)
    consumer_state: str = "off"
    """`off` (not run here), `starting` (joining the groups), `running`."""
    topics_ready: bool = False
    _background: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _details: dict[str, Callable[[], Awaitable[Any]]] = field(default_factory=dict)
    _due: dict[str, Callable[[], Awaitable[datetime | None]]] = field(default_factory=dict)
    _nudge: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, service: Service[S, Any], settings: S, clock: Clock) -> Kernel[S]:
        if settings.migrate_on_start:
            await service.migrate(settings)
        pool = await create_pool(
            settings.database_url.get_secret_value(),
            settings.db_schema,
            application_name=service.name,
            max_size=settings.db_pool_size,
            generic_plans=settings.db_generic_plans,
        )
        if settings.clock_control:
            clock = MovableClock(clock, await clock_control.load(pool))
            log.warning("the clock may be moved (CLOCK_CONTROL)", now=clock.now().isoformat())
        kernel = cls(service, settings, clock, pool, make_broker(settings, client_id=service.name))
        if service.audit:
            kernel.auditor = audit.Auditor(
                pool, clock, service=service.name, prefix=settings.topic_prefix
            )
        try:
            kernel.parts = await service.build(kernel)
        except BaseException:
            await pool.close()
            raise
        relay = outbox.OutboxRelay(
            pool,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            dsn=settings.database_url.get_secret_value(),
            schema=settings.db_schema,
            batch_size=settings.outbox_batch_size,
        )
        if settings.run_relay:
            kernel._spawn("outbox-relay", relay.run)
        kernel.topics_ready = not settings.kafka_create_topics or await kernel._ensure_topics(5.0)
        if kernel.consumers:
            kernel.consumer_state = "starting"
            kernel._spawn("consumers", kernel._start_consumers)
        for name, run in kernel._background:
            kernel._spawn(name, run)
        kernel._spawn("loop-lag", watch_loop_lag)
        tune_gc()
        watch_gc_pauses()
        log.info(
            f"{service.name} started",
            schema=settings.db_schema,
            topic_prefix=settings.topic_prefix,
            consumer_groups=[settings.group_id(c.name) for c in kernel.consumers],
        )
        if settings.accepts_dev_token:
            log.warning(
                f"the development API token is accepted; set {service.env_prefix}API_TOKENS"
            )
        return kernel

    def consume(
        self,
        spec: TopicSpec,
        name: str,
        apply: Apply[Any],
        *,
        lanes: int = 1,
        max_records: int = 1_000,
        fetch_bytes: int = 1024 * 1024,
        description: str = "",
    ) -> BatchConsumer | None:
        """Consume `spec`'s topic in the consumer group `<group>.<name>` with `apply`. Nothing
        is subscribed when the settings say not to run consumers (returns None)."""
        if not self.settings.run_consumers:
            return None
        prefix = self.settings.topic_prefix
        consumer: BatchConsumer = BatchConsumer(
            name=name,
            codec=TopicCodec(spec.schemas, max_bytes=self.settings.max_event_bytes),
            apply=apply,
            dead_letters=DeadLetters(
                self.broker, group=self.settings.group_id(name), clock=self.clock
            ),
            dead_letter_topic=spec.dead_letter_topic(prefix),
            lanes=lanes,
            rebalance_flush_seconds=self.settings.rebalance_flush_seconds,
        )
        subscribe(
            self.broker,
            self.settings,
            spec.topic(prefix),
            consumer,
            max_records=max_records,
            fetch_bytes=fetch_bytes,
            title=f"{self.service.name}.{name}",
            description=description,
        )
        self.consumers.append(consumer)
        return consumer

    def background(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as a task from start to stop (it is cancelled at stop)."""
        self._background.append((name, run))

    def periodic(
        self,
        name: str,
        step: Callable[[], Awaitable[Any]],
        every_seconds: float,
        *,
        batch: int | None = None,
        first_after: bool = False,
        alone: bool = False,
    ) -> None:
        """Run `step()` every `every_seconds` from start to stop (`first_after`: the first
        round one interval after start, not at once); at once again while it reports a full
        `batch` done (a backlog). A failed round is logged and the next one runs on schedule:
        a database blip never ends the task. `alone`: a round is skipped while another
        replica of the service runs the same step (a sweep that several replicas would only
        repeat); steps that split their work safely (`FOR UPDATE SKIP LOCKED`) need not."""
        lock = f"{self.settings.db_schema}.{name}"

        async def round_() -> Any:
            if not alone:
                return await step()
            _, done = await run_alone(self.pool, lock, step)
            return done

        async def run() -> None:
            if first_after:
                await asyncio.sleep(every_seconds)
            while True:
                try:
                    done = await round_()
                    if batch is not None and done >= batch:
                        continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("periodic round failed", task=name, error=repr(exc))
                with contextlib.suppress(TimeoutError):  # or at once when the clock moves
                    await asyncio.wait_for(self._nudge.wait(), every_seconds)

        self.background(name, run)

    def due(self, name: str, next_due: Callable[[], Awaitable[datetime | None]]) -> None:
        """Declare scheduled work: `await next_due()` is when it next falls due (None:
        nothing scheduled). Moving the clock (`billing clock`) steps to these instants in
        order, and waits until what fell due has run."""
        self._due[name] = next_due

    async def due_and_waiting(self, now: datetime) -> tuple[datetime | None, list[str]]:
        """The earliest instant scheduled work falls due, and what keeps the service busy at
        `now`: its outbox, consumers with records to read, work due already."""
        waiting: list[str] = []
        if await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM outbox)"):
            waiting.append("outbox")
        waiting += [f"consumer {c.name}" for c in self.consumers if not await c.caught_up()]
        earliest: datetime | None = None
        for name, next_due in self._due.items():
            at = await next_due()
            if at is None:
                continue
            if at <= now:
                waiting.append(f"{name} due at {at.isoformat()}")
            earliest = at if earliest is None else min(earliest, at)
        return earliest, waiting

    async def move_clock(self, to: datetime) -> None:
        """Move the movable clock forward to `to`, keep it, and wake the scheduled tasks."""
        assert isinstance(self.clock, MovableClock)
        offset = self.clock.move_to(to)
        await clock_control.save(self.pool, offset, self.clock.now())
        log.info("clock moved", now=self.clock.now().isoformat())
        self._nudge.set()
        self._nudge.clear()

    def detail(self, name: str, read: Callable[[], Awaitable[Any]]) -> None:
        """Show `await read()` under `name` in readiness's body (it never decides readiness:
        e.g. how many reports wait for an operator)."""
        self._details[name] = read

    def on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Await `close()` at stop, after the background tasks and before the pool closes."""
        self._on_stop.append(close)

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(run(), name=name))  # type: ignore[arg-type]

    async def _start_consumers(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                if not self.topics_ready:
                    self.topics_ready = await self._ensure_topics(None)
                await self.broker.connect()
                started = time.monotonic()
                await asyncio.gather(*(sub.start() for sub in self.broker.subscribers))
                self.broker.running = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("consumers not started; retrying", error=repr(exc), retry_in=delay)
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                await asyncio.sleep(delay)
                continue
            self.consumer_state = "running"
            log.info(
                "consumer groups joined",
                groups=[self.settings.group_id(c.name) for c in self.consumers],
                seconds=round(time.monotonic() - started, 2),
            )
            return

    async def _ensure_topics(self, timeout: float | None) -> bool:
        """Create the registry's topics; False if the broker did not answer within `timeout`
        (then the consumers' start, in the background, tries again)."""
        try:
            await asyncio.wait_for(
                ensure_topics(
                    self.settings.kafka_bootstrap_servers,
                    self.settings.topic_prefix,
                    layout=self.settings.topic_layout,
                ),
                timeout,
            )
        except (TimeoutError, OSError, KafkaError) as exc:
            if timeout is None:
                raise
            log.warning("topics not created yet; the broker did not answer", error=repr(exc))
            return False
        return True

    async def stop(self) -> None:
        """Stop in order; every step is bounded (`STOP_STEP_SECONDS`): a broker or database that
        does not answer delays a stop, it never blocks it."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            done, stuck = await asyncio.wait(self._tasks, timeout=STOP_STEP_SECONDS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a task that failed before the stop was logged
            if stuck:
                log.warning("tasks still stopping", tasks=sorted(t.get_name() for t in stuck))
        for close in self._on_stop:
            await _bounded(close(), "on-stop")
        await self._stop_consuming()
        await _bounded(self.broker.stop(), "broker")
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:
            self.pool.terminate()
        log.info(f"{self.service.name} stopped")

    async def _stop_consuming(self) -> None:
        """Stop fetching, then let the batches in flight finish (bounded), so that what was
        applied is also committed."""
        for subscriber in self.broker.subscribers:
            subscriber.running = False
        loops = [t for s in self.broker.subscribers for t in getattr(s, "tasks", ())]
        if loops:
            await asyncio.wait(loops, timeout=self.settings.rebalance_flush_seconds)
        for consumer in self.consumers:
            await consumer.flush(self.settings.rebalance_flush_seconds)

    def assignments(self) -> dict[str, list[int]]:
        """Partitions this instance owns, per topic."""
        owned: dict[str, list[int]] = {}
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            for tp in consumer.assignment() if consumer is not None else ():
                owned.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(partitions) for topic, partitions in owned.items()}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can serve, and the details behind the answer."""
        try:
            await self.pool.fetchval("SELECT 1", timeout=2)
            database = "ok"
        except Exception as exc:
            database = f"unreachable: {exc!r}"[:200]
        broker = "connected" if await self._broker_up() else "unreachable"
        now = time.monotonic()
        consumers: dict[str, Any] = {}
        blocking = False
        for consumer in self.consumers:
            stalled = consumer.stalled()
            blocking |= any(now - s.since > self.settings.stall_grace_seconds for s in stalled)
            consumers[consumer.name] = {
                "group": self.settings.group_id(consumer.name),
                "state": self.consumer_state,
                "parked": {
                    "since_start": consumer.parked.count,
                    "last_reason": consumer.parked.last_reason,
                },
                "stalled": [
                    {
                        "topic": s.topic,
                        "partition": s.partition,
                        "offset": s.offset,
                        "lag": s.lag,
                        "failures": s.failures,
                        "stalled_seconds": round(now - s.since, 1),
                        "error": s.error,
                    }
                    for s in stalled
                ],
            }
        ready = database == "ok" and not blocking
        details: dict[str, Any] = {}
        for name, read in self._details.items():
            try:
                details[name] = await asyncio.wait_for(read(), 2)
            except Exception as exc:
                details[name] = f"unavailable: {exc!r}"[:200]
        return ready, {
            "database": database,
            "broker": broker,
            "consumers": consumers,
            **details,
        }

    async def _broker_up(self) -> bool:
        if self.consumer_state != "running":
            return False
        try:
            return await self.broker.ping(timeout=0.5)
        except Exception:
            return False


def create_app(
    service: Service[S, Any], settings: S | None = None, clock: Clock | None = None
) -> FastAPI:
    """The service's ASGI app; starting it (its lifespan) starts the kernel."""
    settings = settings or service.settings()
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kernel = await Kernel.start(service, settings, clock)
        app.state.runtime = kernel
        app.state.parts = kernel.parts
        try:
            yield
        finally:
            await kernel.stop()

    app = FastAPI(title=service.title, version="1", summary=service.summary, lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if service.hot_routes:
        app.add_middleware(HotRoutes, routes=service.hot_routes)
    install_problem_handlers(app)
    for router in (*service.routers, clock_control.router):
        app.include_router(router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        """Ready to serve: the database answers and no partition is stalled beyond the grace
        period. 503 otherwise; the body says which part is not."""
        ready, details = await request.app.state.runtime.readiness()
        return JSONResponse(
            {"status": "ready" if ready else "not-ready", **details},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics (`shared.metrics`): records applied and parked per consumer and
        topic, parked by reason, failed batches, batch time, consumer lag, the outbox, and each
        service's own."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app


SERVICES_GROUP = "billing.services"


def registered() -> list[Service[Any, Any]]:
    """Every service registered in the `billing.services` entry points (`pyproject.toml`), by
    name: how `make run`, the `billing` command and the contracts find them (shared/ never
    imports services/)."""
    return sorted((e.load() for e in entry_points(group=SERVICES_GROUP)), key=lambda s: s.name)


def load_settings(service: Service[S, Any]) -> S:
    """The service's settings from the environment; on a bad value, say which and exit
    (without echoing the input, which may hold secrets)."""
    try:
        return service.settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            print(f"{service.name}: invalid setting {where}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def main(service: Service[S, Any], argv: Sequence[str] | None = None) -> None:
    """`python -m services.<name> [serve|migrate|topics]`: serve, apply the migrations, or
    create the registry's topics (one-off jobs before a rollout)."""
    parser = argparse.ArgumentParser(prog=f"python -m {service.module}")
    parser.add_argument(
        "command", nargs="?", default="serve", choices=("serve", "migrate", "topics")
    )
    args = parser.parse_args(argv)
    settings = load_settings(service)
    configure_logging(settings.log_level, service=service.name)
    if args.command == "migrate":
        applied = asyncio.run(service.migrate(settings))
        print("\n".join(applied) or "schema up to date")
        return
    if args.command == "topics":
        names = asyncio.run(
            ensure_topics(
                settings.kafka_bootstrap_servers,
                settings.topic_prefix,
                layout=settings.topic_layout,
            )
        )
        print(f"{len(names)} topics present (the registry's and their dead-letter topics)")
        return
    uvicorn.run(
        create_app(service, settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
