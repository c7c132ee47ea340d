"""A service running in the test's process: its whole lifespan (consumers, background tasks,
the outbox relay) on the real broker and database, its HTTP API through ASGI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn

from shared.clock import Clock
from shared.devstack.processes import free_port
from shared.events import Event
from shared.service import Service, create_app
from shared.settings import DEV_API_TOKEN
from shared.topics import TopicSpec

from .helpers import produce


@contextlib.asynccontextmanager
async def serving_service(
    service: Service[Any, Any], settings: Any, clock: Clock
) -> AsyncIterator[tuple[Any, str]]:
    """The service in this process, served over HTTP on a free port: yields (the kernel, its
    base URL), for what calls it from outside (webhooks, the `billing` command)."""
    app = create_app(service, settings, clock)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        yield app.state.runtime, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def running_service(
    service: Service[Any, Any], settings: Any, clock: Clock
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """Yields (the kernel, an HTTP client with the development token)."""
    app = create_app(service, settings, clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://service",
            headers={"Authorization": f"Bearer {DEV_API_TOKEN}"},
        ) as http:
            yield app.state.runtime, http


class Publishing:
    """For a test harness with `settings`: the test's topics, and events published on them as
    the other teams' systems would."""

    settings: Any

    @property
    def bootstrap(self) -> str:
        return str(self.settings.kafka_bootstrap_servers)

    def topic(self, spec: TopicSpec) -> str:
        return spec.topic(self.settings.topic_prefix)

    async def publish(self, spec: TopicSpec, *events: Event) -> None:
        await produce(self.bootstrap, self.topic(spec), [(e.key, e.to_bytes()) for e in events])
