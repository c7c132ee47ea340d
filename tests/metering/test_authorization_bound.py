"""Authorizations beyond the bound on waiting requests: 503 with Retry-After, and the
approvals still consistent (a metering of its own, with a small bound)."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from services.metering.settings import MeteringSettings
from shared.clock import FrozenClock
from tests.metering.conftest import running_metering
from tests.metering.test_authorizations import ESTIMATE, ask, funded, holds_are_consistent


async def test_requests_beyond_the_waiting_bound_get_503_with_retry_after(
    metering_settings: MeteringSettings, clock: FrozenClock, db: asyncpg.Connection
) -> None:
    settings = metering_settings.model_copy(update={"max_waiting_authorizations": 3})
    async with running_metering(settings, clock) as metering:
        await funded(metering, "org_crowd", 1_000 * ESTIMATE)
        responses = await asyncio.gather(*(ask(metering, "org_crowd") for _ in range(200)))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
    allowed = statuses[200]
    assert await holds_are_consistent(db, "org_crowd") == (10_000, allowed * 10, allowed * 10)
