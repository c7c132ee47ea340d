"""Two scheduler instances (two service instances on one schema) never double a renewal."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from services.subscriptions.app import SERVICE
from shared.testing import eventually
from shared.testing.service import running_service
from tests.subscriptions.conftest import Billing

ORGANISATIONS = 20

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_two_schedulers_never_double_a_reset(billing: Billing) -> None:
    orgs = [f"org_{uuid.uuid4().hex[:10]}" for _ in range(ORGANISATIONS)]
    created = billing.clock.now()
    for org in orgs:
        await billing.organisation(org, created_at=created)

    async with running_service(SERVICE, billing.settings, billing.clock) as (other, _):
        billing.clock.set(created + timedelta(days=30))
        # Both background schedulers run; both are also driven here, at the same time.
        await asyncio.gather(
            *(
                kernel.parts.subscriptions.renew_due(7)
                for _ in range(5)
                for kernel in (billing.kernel, other)
            )
        )

        async def renewed() -> bool:
            subs = [await billing.subscription(org) for org in orgs]
            return all(s["credit_period_start"] == "2026-12-15T12:00:00Z" for s in subs)

        await eventually(renewed, what="every organisation renewed")

    for org in orgs:
        keys = Counter(key for reason, _, key in await billing.grants(org))
        assert keys["renew:2026-12-15T12:00:00Z"] == 1, (org, keys)
    ledger = await billing.metering.get(f"/v1/organisations/{orgs[0]}/ledger")
    resets = [e for e in ledger.json()["entries"] if e["reason"] == "renewal_reset"]
    assert len(resets) == 1
