"""The page's usage is the ledger's: 1,000 random usage events (a message sent twice under two
event ids is refused by metering, a redelivery is ignored), with a plan change half-way that
begins a new credit period; the page's totals, by member too, equal the ledger's, for the
current period and the one before."""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta

import httpx
import pytest

from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.testing import eventually
from shared.topics import AGENT_USAGE
from tests.dashboard.conftest import Page
from tests.subscriptions.conftest import OWNER
from tests.subscriptions.test_lifecycle import checkout_through_stripe

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

MEMBERS = [f"member_{n}" for n in range(5)]
AGENTS = [f"agent_{n}" for n in range(4)]


def usage_events(
    rng: random.Random, org: str, count: int, start: datetime
) -> list[AgentMessageProcessedV1]:
    """`count` events: mostly new messages, some sent again under a new event id, some
    delivered twice as they are."""
    events: list[AgentMessageProcessedV1] = []
    for n in range(count):
        if events and rng.random() < 0.05:
            events.append(rng.choice(events))  # a redelivery
            continue
        message = (
            rng.choice(events).data.message_id
            if events and rng.random() < 0.12
            else f"msg_{uuid.uuid4().hex[:12]}"
        )
        events.append(
            AgentMessageProcessedV1.new(
                organisation_id=org,
                producer="agent-runtime",
                occurred_at=start + timedelta(seconds=n),
                data=AgentMessageProcessed(
                    member_id=rng.choice(MEMBERS),
                    agent_id=rng.choice(AGENTS),
                    conversation_id="conv_1",
                    message_id=message,
                    credits=rng.randint(1, 40),
                ),
            )
        )
    return events


async def ledger_debits(page: Page, org: str) -> list[dict]:
    """Every debit of the organisation's ledger, through metering's ledger API."""
    found, before = [], None
    while True:
        params = {"limit": 500, **({"before": before} if before else {})}
        answer = await page.billing.metering.get(f"/v1/organisations/{org}/ledger", params=params)
        body = answer.json()
        found += [e for e in body["entries"] if e["kind"] == "debit"]
        before = body["next_before"]
        if before is None:
            return found


def totals(debits: list[dict], since: datetime, until: datetime | None) -> tuple[int, Counter]:
    chosen = [
        d
        for d in debits
        if datetime.fromisoformat(d["occurred_at"]) >= since
        and (until is None or datetime.fromisoformat(d["occurred_at"]) < until)
    ]
    by_member: Counter[str] = Counter()
    for d in chosen:
        by_member[d["member_id"]] += -d["amount"]
    return sum(-d["amount"] for d in chosen), by_member


def shown(html: str) -> tuple[int, Counter]:
    total = int(re.search(r"id='usage-total'>([\d,]+)<", html).group(1).replace(",", ""))
    table = re.search(r"<table id='by-member'>(.*?)</table>", html, re.S).group(1)
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([\d,]+)</td></tr>", table)
    return total, Counter({m: int(c.replace(",", "")) for m, c in rows})


async def test_the_pages_usage_equals_the_ledgers_across_a_plan_change(dashboard: Page) -> None:
    billing = dashboard.billing
    rng = random.Random(20261130)
    org = f"org_{uuid.uuid4().hex[:10]}"
    await billing.organisation(org)
    free_start = datetime.fromisoformat((await billing.credits(org))["period_start"])
    await dashboard.knows(org, OWNER)

    first = usage_events(rng, org, 500, free_start + timedelta(minutes=1))
    await billing.publish(AGENT_USAGE, *first)
    model_first = {e.data.message_id: e for e in reversed(first)}  # the first of each wins
    await billing.credits(org, used=sum(e.data.credits for e in model_first.values()))

    billing.clock.advance(timedelta(days=3))
    await checkout_through_stripe(billing, org, "pro")  # a plan start: a new credit period
    pro = await billing.credits(org, allotment=20_000)
    pro_start = datetime.fromisoformat(pro["period_start"])
    assert pro_start > free_start

    second = usage_events(rng, org, 500, pro_start + timedelta(minutes=1))
    await billing.publish(AGENT_USAGE, *second)
    model_second = {
        e.data.message_id: e for e in reversed(second) if e.data.message_id not in model_first
    }
    used = sum(e.data.credits for e in model_second.values())
    await billing.credits(org, used=used)
    billing.clock.advance(timedelta(hours=1))  # after the last message

    debits = await ledger_debits(dashboard, org)
    assert len(debits) == len(model_first) + len(model_second)  # refused and ignored: none
    async with httpx.AsyncClient(base_url=dashboard.url) as client:

        async def page(**params: str) -> str:
            answer = await client.get("/billing", params=params, headers=billing.acting(org, OWNER))
            assert answer.status_code == 200, answer.text
            return answer.text

        async def current_matches() -> bool:
            return shown(await page()) == totals(debits, pro_start, None)

        await eventually(current_matches, what="the current period's usage equals the ledger's")
        total, by_member = shown(await page())
        assert total == used
        assert set(by_member) <= set(MEMBERS)

        earlier = await page(period=free_start.isoformat())
        assert shown(earlier) == totals(debits, free_start, pro_start)
        assert shown(earlier)[0] == sum(e.data.credits for e in model_first.values())
