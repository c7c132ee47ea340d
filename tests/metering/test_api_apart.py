"""Metering as two processes on one schema: the HTTP API alone (no consumers, no outbox relay)
and the consumers with the relay. Requests are answered by the first; what they announce is
published by the second."""

from __future__ import annotations

import asyncio
import os
from unittest import mock

import asyncpg
import httpx

from services.metering.app import SERVICE
from services.metering.settings import MeteringSettings
from shared.clock import SystemClock
from shared.service import Kernel, create_app
from shared.settings import DEV_API_TOKEN
from shared.testing import eventually, read_topic
from shared.topics import CREDIT_AUTHORIZATIONS


async def test_the_api_apart_from_consumers_and_relay(
    metering_env: dict[str, str], db: asyncpg.Connection
) -> None:
    with mock.patch.dict(
        os.environ,
        {**metering_env, "METERING_RUN_CONSUMERS": "false", "METERING_RUN_RELAY": "false"},
    ):
        api_settings = MeteringSettings()
    with mock.patch.dict(os.environ, metering_env):
        worker_settings = MeteringSettings()
    app = create_app(SERVICE, api_settings, SystemClock())
    async with app.router.lifespan_context(app):
        api: Kernel = app.state.runtime
        assert api.consumers == []
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {DEV_API_TOKEN}"},
        ) as http:
            answer = await http.post(
                "/v1/authorizations",
                json={"organisation_id": "org_apart", "member_id": "m", "message_id": "msg_1"},
            )
            assert answer.status_code == 200
            assert answer.json()["reason"] == "no_wallet"
            await asyncio.sleep(1.0)
            assert await db.fetchval("SELECT count(*) FROM outbox") == 1  # nobody publishes

            worker = await Kernel.start(SERVICE, worker_settings, SystemClock())
            try:

                async def published() -> bool:
                    return await db.fetchval("SELECT count(*) FROM outbox") == 0

                await eventually(published, what="the worker's relay publishes the outbox")
            finally:
                await worker.stop()
    topic = CREDIT_AUTHORIZATIONS.topic(worker_settings.topic_prefix)
    records = await read_topic(worker_settings.kafka_bootstrap_servers, topic, at_least=1)
    assert [r.key for r in records] == [b"org_apart"]
