"""Budgets per member and per agent against the real database and broker: set by owners, seen
by members, counted from the ledger when first set, restarted with the credit period, and held
exactly under a storm of concurrent authorizations."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import uuid4

import asyncpg
import orjson
import pytest
import pytest_asyncio

from services.metering.authorizer import Ask, Authorizer
from services.metering.domain.authorization import DenialReason, Request
from services.metering.domain.budgets import Budgets, Scope
from shared import identity
from shared.clock import FrozenClock
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.events.members import MemberJoinedV1, MemberRole, MemberState, MemberStatus
from shared.identity import IDENTITY_HEADER
from shared.testing import eventually, produce, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import CREDIT_AUTHORIZATIONS, WORKSPACE_MEMBERS
from tests.metering.conftest import (
    T0,
    MeteringHarness,
    grant_command,
    module_metering,
)
from tests.metering.test_budgets_domain import reference

pytestmark = pytest.mark.asyncio(loop_scope="module")

OWNER = "member_owner"


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    return FrozenClock(T0 + timedelta(days=2))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation, clock: FrozenClock
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(infrastructure, module_isolation, clock) as harness:
        yield harness


@pytest.fixture(scope="module")
def db(module_db: asyncpg.Connection) -> asyncpg.Connection:
    return module_db


async def join(
    metering: MeteringHarness, clock: FrozenClock, organisation: str, *members: str
) -> None:
    """`OWNER` as the owner and `members` as members, active, in the member directory."""
    events = [
        MemberJoinedV1.new(
            organisation_id=organisation,
            producer="member-directory",
            occurred_at=clock.now(),
            data=MemberState(
                member_id=m,
                role=MemberRole.OWNER if m == OWNER else MemberRole.MEMBER,
                status=MemberStatus.ACTIVE,
                sequence=1,
            ),
        )
        for m in (OWNER, *members)
    ]
    await produce(
        metering.bootstrap,
        metering.topic(WORKSPACE_MEMBERS),
        [(e.key, e.to_bytes()) for e in events],
    )

    async def known() -> bool:
        answer = await metering.http.get("/v1/budgets", headers=acting(clock, organisation, OWNER))
        return answer.status_code == 200

    await eventually(known, what=f"{organisation}'s members in metering's directory")


def acting(clock: FrozenClock, organisation: str, member: str) -> dict[str, str]:
    return {IDENTITY_HEADER: identity.sign(organisation, member, clock.now())}


async def put(
    metering: MeteringHarness,
    clock: FrozenClock,
    organisation: str,
    path: str,
    cap: int | None,
    by: str = OWNER,
) -> dict:
    answer = await metering.http.put(
        f"/v1/budgets/{path}", json={"monthly_cap": cap}, headers=acting(clock, organisation, by)
    )
    return {"status": answer.status_code, **answer.json()}


def spend(
    organisation: str, member: str, agent: str | None, credits: int, message: str | None = None
) -> AgentMessageProcessedV1:
    return AgentMessageProcessedV1.new(
        organisation_id=organisation,
        producer="agent-runtime",
        occurred_at=T0,
        data=AgentMessageProcessed(
            member_id=member,
            agent_id=agent or "agent_unnamed",
            conversation_id="conv_1",
            message_id=message or f"msg_{uuid4().hex[:10]}",
            credits=credits,
        ),
    )


async def ask(
    metering: MeteringHarness, organisation: str, member: str, agent: str | None, estimate: int
) -> dict:
    body = {
        "organisation_id": organisation,
        "member_id": member,
        "message_id": f"msg_{uuid4().hex[:10]}",
        "estimate": estimate,
    }
    answer = await metering.http.post("/v1/authorizations", json=body | {"agent_id": agent})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_owners_set_budgets_and_members_see_only_their_own(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    org = "org_budget_view"
    await metering.publish_grants(grant_command(org, 1_000))
    await metering.wait_for(org, balance=1_000)
    await join(metering, clock, org, "member_ann", "member_bob")
    refused = await put(metering, clock, org, "member-default", 10, by="member_ann")
    assert (refused["status"], refused["reason"]) == (403, "not_owner")
    assert (await put(metering, clock, org, "member-default", 40))["status"] == 200
    assert (await put(metering, clock, org, "members/member_ann", 100))["status"] == 200
    owner_view = await put(metering, clock, org, "agents/agent_1", 500)
    assert owner_view["member_default"] == 40 and owner_view["editable"] is True
    assert await ask(metering, org, "member_bob", "agent_1", 30)  # held against bob and agent_1
    bob = (await metering.http.get("/v1/budgets", headers=acting(clock, org, "member_bob"))).json()
    assert bob["editable"] is False and bob["agents"] == []
    assert bob["members"] == [
        {"subject_id": "member_bob", "cap": 40, "own": False, "spent": 0, "held": 30, "left": 10}
    ]
    everyone = (await metering.http.get(f"/v1/organisations/{org}/budgets")).json()
    assert {(m["subject_id"], m["cap"], m["own"]) for m in everyone["members"]} == {
        ("member_ann", 100, True),
        ("member_bob", 40, False),
    }
    assert [(a["subject_id"], a["held"], a["left"]) for a in everyone["agents"]] == [
        ("agent_1", 30, 470)
    ]
    denied = await ask(metering, org, "member_bob", "agent_1", 11)
    assert denied["reason"] == DenialReason.MEMBER_BUDGET_EXHAUSTED
    stranger = await metering.http.get("/v1/budgets", headers=acting(clock, org, "member_eve"))
    assert stranger.status_code == 403
    audit = await metering.kernel.pool.fetch(
        """SELECT actor, action, target, outcome, detail FROM audit_log
           WHERE organisation_id = $1 ORDER BY id""",
        org,
    )
    assert [tuple(r.values()) for r in audit] == [
        ("member_ann", "budget", "member_default", "refused", "not_owner"),
        (OWNER, "budget", "member_default", "succeeded", "monthly cap 40"),
        (OWNER, "budget", "member:member_ann", "succeeded", "monthly cap 100"),
        (OWNER, "budget", "agent:agent_1", "succeeded", "monthly cap 500"),
    ]


async def test_the_first_budget_counts_what_was_already_spent_and_budgets_restart_with_the_period(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    org = "org_budget_period"
    await metering.publish_grants(grant_command(org, 1_000))
    await metering.wait_for(org, balance=1_000)
    await join(metering, clock, org, "member_ann")
    await metering.publish_usage(spend(org, "member_ann", "agent_x", 70))
    await metering.wait_for(org, balance=930)
    view = await put(metering, clock, org, "members/member_ann", 100)
    assert [(m["spent"], m["left"]) for m in view["members"]] == [(70, 30)]
    assert (await ask(metering, org, "member_ann", "agent_x", 31))["reason"] == (
        "member_budget_exhausted"
    )
    await metering.publish_usage(spend(org, "member_ann", "agent_x", 30))
    await metering.wait_for(org, balance=900)
    assert (await ask(metering, org, "member_ann", None, 1))["reason"] == "member_budget_exhausted"
    # A new credit period: the budget restarts.
    clock.set(T0 + timedelta(days=30))
    await metering.publish_grants(
        grant_command(
            org,
            1_000,
            period_key="2026-12",
            period_start=clock.now(),
            period_end=clock.now() + timedelta(days=31),
        )
    )
    await metering.wait_for(org, balance=1_000)
    allowed = await ask(metering, org, "member_ann", "agent_x", 100)
    assert allowed["decision"] == "allowed"
    # Removing every budget and setting one again counts this period's spending anew.
    await metering.publish_usage(spend(org, "member_ann", "agent_x", 5))
    await metering.wait_for(org, balance=995)
    await put(metering, clock, org, "members/member_ann", None)
    await metering.publish_usage(spend(org, "member_ann", "agent_x", 6))
    await metering.wait_for(org, balance=989)
    view = await put(metering, clock, org, "agents/agent_x", 1_000)
    assert [(a["spent"], a["held"]) for a in view["agents"]] == [(11, 100)]


@pytest.mark.parametrize("run", [1, 2, 3])
async def test_a_storm_of_authorizations_allows_exactly_what_every_level_covers(
    metering: MeteringHarness, clock: FrozenClock, run: int
) -> None:
    """1,000 concurrent authorizations from 50 members to 10 agents, with tight budgets at every
    level (and some spending before): replayed in the order metering decided them, every
    verdict is what a reference gives from scratch, and no level is overspent."""
    rng = random.Random(run)
    org = f"org_budget_storm{run}"
    members = [f"member_{n:02d}" for n in range(50)]
    agents = [f"agent_{n}" for n in range(10)]
    await metering.publish_grants(grant_command(org, 1_800))
    await metering.wait_for(org, balance=1_800)
    await join(metering, clock, org, *members)
    before = [
        spend(org, rng.choice(members), rng.choice(agents), rng.randint(1, 30)) for _ in range(40)
    ]
    await metering.publish_usage(*before)
    balance = 1_800 - sum(e.data.credits for e in before)
    await metering.wait_for(org, balance=balance)
    own = {m: rng.randint(20, 120) for m in members[::2]}
    agent_caps = {a: rng.randint(60, 200) for a in agents[:8]}
    await put(metering, clock, org, "member-default", 60)
    for member, cap in own.items():
        await put(metering, clock, org, f"members/{member}", cap)
    for agent, cap in agent_caps.items():
        await put(metering, clock, org, f"agents/{agent}", cap)
    used: dict[tuple[Scope, str], int] = {}
    for e in before:
        for key in ((Scope.MEMBER, e.data.member_id), (Scope.AGENT, e.data.agent_id)):
            used[key] = used.get(key, 0) + e.data.credits
    budgets = Budgets(members=own, member_default=60, agents=agent_caps, used=used)

    asks = [(rng.choice(members), rng.choice(agents), rng.randint(1, 20)) for _ in range(1000)]
    # A second metering instance's authorizer decides half of them, on the same database.
    other = Authorizer(
        metering.kernel.pool,
        clock,
        hold_ttl=timedelta(seconds=metering.settings.hold_ttl_seconds),
        topic_prefix=metering.settings.topic_prefix,
        lanes=3,
    )

    async def elsewhere(member: str, agent: str, estimate: int) -> dict:
        message = f"msg_{uuid4().hex[:10]}"
        found = await other.authorize(Ask(org, member, message, agent, estimate))
        return {"message_id": message, "decision": found.decision}

    answers = await asyncio.gather(
        *(
            ask(metering, org, m, a, e) if n % 2 else elsewhere(m, a, e)
            for n, (m, a, e) in enumerate(asks)
        )
    )

    async def announced() -> list[dict] | None:
        records = await read_topic(metering.bootstrap, metering.topic(CREDIT_AUTHORIZATIONS))
        found = [orjson.loads(r.value)["data"] for r in records if r.key == org.encode()]
        return found if len(found) >= 1000 else None

    decided = await eventually(announced, what="every decision announced")
    assert len(decided) == 1000
    in_order = [
        Request(d["message_id"], d["estimate"], d["member_id"], d["agent_id"]) for d in decided
    ]
    expected = reference(in_order, budgets, balance, 0)
    assert [(d["decision"] == "allowed", d["reason"]) for d in decided] == [
        (ok, reason.value if reason else None) for ok, reason in expected
    ]
    by_message = {a["message_id"]: a for a in answers}
    assert all(by_message[d["message_id"]]["decision"] == d["decision"] for d in decided)
    reasons = {d["reason"] for d in decided}
    assert {"member_budget_exhausted", "agent_budget_exhausted", "insufficient_credits"} <= reasons
    allowed = [d for d in decided if d["decision"] == "allowed"]
    assert sum(d["estimate"] for d in allowed) <= balance
    for member in members:
        cap = own.get(member, 60) - used.get((Scope.MEMBER, member), 0)
        assert sum(d["estimate"] for d in allowed if d["member_id"] == member) <= max(0, cap)
    for agent, cap in agent_caps.items():
        room = cap - used.get((Scope.AGENT, agent), 0)
        assert sum(d["estimate"] for d in allowed if d["agent_id"] == agent) <= max(0, room)
    view = (await metering.http.get(f"/v1/organisations/{org}/budgets")).json()
    held = {m["subject_id"]: m["held"] for m in view["members"]}
    for member in members:
        assert held.get(member, 0) == sum(
            d["estimate"] for d in allowed if d["member_id"] == member
        )


async def test_what_budgets_count_stays_equal_to_the_holds_and_the_ledger(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    """Holds taken, then at once released, settled by usage (for more or less than held) or
    left to expire: what budgets count per member and agent always equals the active holds
    and the period's debits."""
    rng = random.Random(7)
    org = "org_budget_counts"
    members = [f"member_{n}" for n in range(8)]
    agents = ["agent_a", "agent_b", None]
    await metering.publish_grants(grant_command(org, 100_000))
    await metering.wait_for(org, balance=100_000)
    await join(metering, clock, org, *members)
    await put(metering, clock, org, "member-default", 10_000)
    await put(metering, clock, org, "agents/agent_a", 10_000)
    answers = await asyncio.gather(
        *(ask(metering, org, rng.choice(members), rng.choice(agents), 10) for _ in range(200))
    )
    fates = [rng.choice(["release", "settle", "expire"]) for _ in answers]
    usage = [
        spend(org, a["member_id"], a["agent_id"], rng.randint(1, 25), message=a["message_id"])
        for a, fate in zip(answers, fates, strict=True)
        if fate == "settle"
    ]
    _, *released = await asyncio.gather(
        metering.publish_usage(*usage),
        *(
            metering.http.post(f"/v1/authorizations/{a['authorization_id']}/release")
            for a, fate in zip(answers, fates, strict=True)
            if fate == "release"
        ),
    )
    assert released and {r.status_code for r in released} == {200}
    await metering.wait_for(org, balance=100_000 - sum(u.data.credits for u in usage))

    async def consistent(expect_held: bool) -> bool:
        counted = {
            (r["scope"], r["subject_id"]): r["held"]
            for r in await db.fetch(
                "SELECT scope, subject_id, held FROM budget_held WHERE organisation_id = $1", org
            )
            if r["held"]
        }
        truth = {
            (r["scope"], r["subject_id"]): r["held"]
            for r in await db.fetch(
                """SELECT x.scope, x.subject_id, sum(a.estimate) AS held
                   FROM authorizations a,
                        LATERAL (VALUES ('member', a.member_id), ('agent', a.agent_id))
                            AS x(scope, subject_id)
                   WHERE a.organisation_id = $1 AND a.status = 'held'
                     AND x.subject_id IS NOT NULL
                   GROUP BY 1, 2""",
                org,
            )
        }
        spent = {
            (r["scope"], r["subject_id"]): r["spent"]
            for r in await db.fetch(
                "SELECT scope, subject_id, spent FROM budget_spend WHERE organisation_id = $1", org
            )
        }
        debited = {
            (r["scope"], r["subject_id"]): r["spent"]
            for r in await db.fetch(
                """SELECT x.scope, x.subject_id, -sum(l.amount) AS spent
                   FROM ledger l,
                        LATERAL (VALUES ('member', l.member_id), ('agent', l.agent_id))
                            AS x(scope, subject_id)
                   WHERE l.organisation_id = $1 AND l.kind = 'debit'
                   GROUP BY 1, 2""",
                org,
            )
        }
        return counted == truth and spent == debited and bool(truth) == expect_held

    await eventually(lambda: consistent(True), what="held and spent as the holds and ledger say")
    clock.advance(timedelta(seconds=metering.settings.hold_ttl_seconds + 1))
    await eventually(lambda: consistent(False), what="every remaining hold expired and uncounted")
    check = await metering.http.post("/v1/ledger-checks", json={"organisation_id": org})
    assert check.json()["mismatches"] == []
    await db.execute(
        """INSERT INTO budget_held AS h VALUES ($1, 'member', 'member_3', 7)
           ON CONFLICT (organisation_id, scope, subject_id) DO UPDATE SET held = h.held + 7""",
        org,
    )
    check = await metering.http.post("/v1/ledger-checks", json={"organisation_id": org})
    assert check.json()["mismatches"] == [
        {"organisation_id": org, "budget": "held:member:member_3", "counted": 7, "actual": 0}
    ]
    await db.execute(
        """UPDATE budget_held SET held = held - 7
           WHERE organisation_id = $1 AND scope = 'member' AND subject_id = 'member_3'""",
        org,
    )
