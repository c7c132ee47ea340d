"""Credit authorization for the chat gateway, against the real database and broker: holds,
settlement, expiry, release, idempotence, group commit, and blocking when credits run out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import uuid4

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio

from services.metering.authorizer import Ask, Authorization, Authorizer, ConcurrentChange
from shared.clock import FrozenClock
from shared.events import CreditAuthorizationDecidedV1, GrantReason
from shared.failures import Failure, classify
from shared.testing import eventually, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import CREDIT_AUTHORIZATIONS
from tests.metering.conftest import (
    T0,
    MeteringHarness,
    grant_command,
    module_metering,
    usage_event,
)

ESTIMATE = 10

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    """One clock for the module: tests that let holds lapse move it forward only."""
    return FrozenClock(T0 + timedelta(days=14, hours=12))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation, clock: FrozenClock
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(infrastructure, module_isolation, clock) as harness:
        yield harness


@pytest.fixture(scope="module")
def db(module_db: asyncpg.Connection) -> asyncpg.Connection:
    return module_db


async def ask(
    metering: MeteringHarness, organisation: str, message_id: str | None = None, **fields: object
) -> httpx.Response:
    body = {
        "organisation_id": organisation,
        "member_id": "member_1",
        "message_id": f"msg_{uuid4().hex[:12]}" if message_id is None else message_id,
        "agent_id": "agent_1",
        "estimate": ESTIMATE,
        **fields,
    }
    return await metering.http.post("/v1/authorizations", json=body)


async def funded(metering: MeteringHarness, organisation: str, credits: int) -> None:
    await metering.publish_grants(grant_command(organisation, credits))
    await metering.wait_for(organisation, balance=credits)


async def holds_are_consistent(db: asyncpg.Connection, organisation: str) -> tuple[int, int, int]:
    """(balance, held on the wallet, sum of active holds): the last two must agree."""
    wallet = await db.fetchrow(
        "SELECT balance, held FROM wallets WHERE organisation_id = $1", organisation
    )
    active = await db.fetchval(
        """SELECT coalesce(sum(estimate), 0) FROM authorizations
           WHERE organisation_id = $1 AND status = 'held'""",
        organisation,
    )
    return wallet["balance"], wallet["held"], active


async def test_a_thousand_concurrent_requests_on_a_wallet_for_a_hundred_approve_a_hundred(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await funded(metering, "org_rush", 100 * ESTIMATE)

    responses = await asyncio.gather(*(ask(metering, "org_rush") for _ in range(1_000)))

    decisions = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    allowed = [d for d in decisions if d["decision"] == "allowed"]
    assert len(allowed) == 100
    assert {d["reason"] for d in decisions if d["decision"] == "denied"} == {"insufficient_credits"}
    assert min(d["available"] for d in allowed) == 0
    assert await holds_are_consistent(db, "org_rush") == (1_000, 1_000, 1_000)
    assert metering.authorizer.cycles < 500, "requests were not group-committed"


async def test_asking_twice_for_the_same_message_gives_one_hold(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await funded(metering, "org_retry", 100)

    first = await ask(metering, "org_retry", "msg_same")
    again = await ask(metering, "org_retry", "msg_same", estimate=50)
    together = await asyncio.gather(*(ask(metering, "org_retry", "msg_other") for _ in range(10)))

    assert again.json()["authorization_id"] == first.json()["authorization_id"]
    assert again.json()["estimate"] == first.json()["estimate"] == ESTIMATE
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len({r.json()["authorization_id"] for r in together}) == 1
    assert await holds_are_consistent(db, "org_retry") == (100, 20, 20)


async def test_a_usage_event_settles_its_hold_exactly_once(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await funded(metering, "org_settle", 100)
    hold = (await ask(metering, "org_settle", "msg_answered")).json()
    assert (hold["decision"], hold["status"]) == ("allowed", "held")

    usage = usage_event("org_settle", 7, message_id="msg_answered")
    await metering.publish_usage(usage, usage)
    await metering.wait_for("org_settle", balance=93)
    await metering.publish_usage(usage, usage_event("org_settle", 1))
    credits = await metering.wait_for("org_settle", balance=92)

    assert credits["held"] == 0 and credits["available"] == 92
    settled = (await metering.http.get(f"/v1/authorizations/{hold['authorization_id']}")).json()
    assert (settled["status"], settled["settled_credits"], settled["held"]) == ("settled", 7, 0)
    assert await holds_are_consistent(db, "org_settle") == (92, 0, 0)


async def test_a_hold_expires_and_frees_its_credits(
    metering: MeteringHarness, clock: FrozenClock, db: asyncpg.Connection
) -> None:
    ttl = timedelta(seconds=metering.settings.hold_ttl_seconds)
    clock.advance(ttl + timedelta(seconds=1))  # the module's earlier holds lapse first
    await metering.authorizer.sweep()
    await funded(metering, "org_lapse", 2 * ESTIMATE)
    first = (await ask(metering, "org_lapse")).json()
    second = (await ask(metering, "org_lapse")).json()
    assert (await ask(metering, "org_lapse")).json()["reason"] == "insufficient_credits"

    clock.advance(ttl - timedelta(seconds=1))
    assert await metering.authorizer.sweep() == 0
    clock.advance(timedelta(seconds=2))
    assert await metering.authorizer.sweep() == 2
    assert await holds_are_consistent(db, "org_lapse") == (20, 0, 0)

    for hold in (first, second):
        found = await metering.http.get(f"/v1/authorizations/{hold['authorization_id']}")
        assert (found.json()["status"], found.json()["held"]) == ("expired", 0)
    assert (await ask(metering, "org_lapse")).json()["decision"] == "allowed"


async def test_a_decision_does_not_wait_for_the_sweeper(
    metering: MeteringHarness, clock: FrozenClock, db: asyncpg.Connection
) -> None:
    ttl = timedelta(seconds=metering.settings.hold_ttl_seconds)
    clock.advance(ttl + timedelta(seconds=1))  # the module's earlier holds lapse first
    await metering.authorizer.sweep()
    await funded(metering, "org_lapse2", ESTIMATE)
    await ask(metering, "org_lapse2")
    clock.advance(ttl + timedelta(seconds=1))

    assert (await ask(metering, "org_lapse2")).json()["decision"] == "allowed"
    # The lapsed hold is still on the wallet until the sweeper marks it expired.
    assert await holds_are_consistent(db, "org_lapse2") == (ESTIMATE, 2 * ESTIMATE, 2 * ESTIMATE)
    assert await metering.authorizer.sweep() == 1
    assert await holds_are_consistent(db, "org_lapse2") == (ESTIMATE, ESTIMATE, ESTIMATE)


async def test_a_released_hold_gives_its_credits_back(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await funded(metering, "org_unsent", ESTIMATE)
    hold = (await ask(metering, "org_unsent")).json()
    assert (await ask(metering, "org_unsent")).json()["decision"] == "denied"

    released = await metering.http.post(f"/v1/authorizations/{hold['authorization_id']}/release")
    again = await metering.http.post(f"/v1/authorizations/{hold['authorization_id']}/release")

    assert released.status_code == again.status_code == 200
    assert released.json()["status"] == "released"
    assert (await ask(metering, "org_unsent")).json()["decision"] == "allowed"
    assert await holds_are_consistent(db, "org_unsent") == (ESTIMATE, ESTIMATE, ESTIMATE)
    unknown = await metering.http.post(f"/v1/authorizations/{uuid4()}/release")
    assert unknown.status_code == 404


async def test_a_settled_hold_cannot_be_released(metering: MeteringHarness) -> None:
    await funded(metering, "org_done", 100)
    hold = (await ask(metering, "org_done", "msg_done")).json()
    await metering.publish_usage(usage_event("org_done", 4, message_id="msg_done"))
    await metering.wait_for("org_done", balance=96)

    response = await metering.http.post(f"/v1/authorizations/{hold['authorization_id']}/release")

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


async def test_overshoot_is_debited_in_full_then_everything_is_denied_until_a_grant(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await funded(metering, "org_overshoot", 30)
    hold = (await ask(metering, "org_overshoot", "msg_big", estimate=30)).json()
    assert hold["decision"] == "allowed"

    await metering.publish_usage(usage_event("org_overshoot", 45, message_id="msg_big"))
    await metering.wait_for("org_overshoot", balance=-15, held=0)

    denied = (await ask(metering, "org_overshoot", estimate=1)).json()
    assert (denied["decision"], denied["reason"]) == ("denied", "credits_exhausted")
    assert denied["balance"] == -15
    assert denied["renews_at"] == "2026-12-01T00:00:00Z"

    await metering.publish_grants(
        grant_command(
            "org_overshoot", 100, reason=GrantReason.UPGRADE_TOP_UP, period_key="upgrade-max"
        )
    )
    await metering.wait_for("org_overshoot", balance=85)
    assert (await ask(metering, "org_overshoot")).json()["decision"] == "allowed"


async def test_an_exhausted_wallet_is_denied_with_the_reason_and_the_renewal_time(
    metering: MeteringHarness,
) -> None:
    await funded(metering, "org_empty", 5)
    await metering.publish_usage(usage_event("org_empty", 5))
    await metering.wait_for("org_empty", balance=0)

    denied = (await ask(metering, "org_empty")).json()
    no_wallet = (await ask(metering, "org_unknown")).json()

    assert (denied["decision"], denied["reason"]) == ("denied", "credits_exhausted")
    assert (denied["balance"], denied["renews_at"]) == (0, "2026-12-01T00:00:00Z")
    assert denied["held"] == 0 and denied["expires_at"] is None
    assert (no_wallet["decision"], no_wallet["reason"]) == ("denied", "no_wallet")


async def test_a_renewal_makes_the_next_authorization_succeed_at_once(
    metering: MeteringHarness,
) -> None:
    await funded(metering, "org_renewed", 5)
    await metering.publish_usage(usage_event("org_renewed", 5))
    await metering.wait_for("org_renewed", balance=0)
    assert (await ask(metering, "org_renewed")).json()["decision"] == "denied"

    await metering.publish_grants(grant_command("org_renewed", 500, period_key="2026-12"))
    await metering.wait_for("org_renewed", balance=500)

    assert (await ask(metering, "org_renewed")).json()["decision"] == "allowed"


async def test_decisions_are_published_for_dashboards(metering: MeteringHarness) -> None:
    await funded(metering, "org_watched", ESTIMATE)
    await ask(metering, "org_watched", "msg_a")
    await ask(metering, "org_watched", "msg_b")

    async def watched() -> list | None:  # type: ignore[type-arg]
        found = await read_topic(metering.bootstrap, metering.topic(CREDIT_AUTHORIZATIONS))
        mine = [r for r in found if r.key == b"org_watched"]
        return mine if len(mine) >= 2 else None

    records = await eventually(watched, what="org_watched's two decisions")
    events = [CreditAuthorizationDecidedV1.model_validate_json(r.value) for r in records]
    assert [(e.data.message_id, e.data.decision, e.data.reason) for e in events] == [
        ("msg_a", "allowed", None),
        ("msg_b", "denied", "insufficient_credits"),
    ]
    assert all(r.key == b"org_watched" for r in records)


async def test_a_request_without_a_valid_token_is_refused(metering: MeteringHarness) -> None:
    body = {"organisation_id": "org_x", "member_id": "m", "message_id": "msg"}
    transport = metering.http._transport  # the same app, without the default header
    async with httpx.AsyncClient(transport=transport, base_url="http://metering") as anonymous:
        missing = await anonymous.post("/v1/authorizations", json=body)
        wrong = await anonymous.post(
            "/v1/authorizations", json=body, headers={"Authorization": "Bearer not-the-token"}
        )
        credits = await anonymous.get("/v1/organisations/org_x/credits")
        health = await anonymous.get("/healthz")

    for response in (missing, wrong, credits):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200


BAD_REQUESTS = [
    {"estimate": 0},
    {"estimate": -5},
    {"estimate": "10"},
    {"estimate": 2.5},
    {"estimate": 10**9},
    {"organisation_id": "acme"},
    {"message_id": ""},
    {"member_id": None},
    {"surprise": True},
]


async def test_bad_requests_get_a_problem_and_change_nothing(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    for change in BAD_REQUESTS:
        response = await ask(metering, "org_bad", **change)
        assert response.status_code == 400, change
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"], change
    assert (
        await db.fetchval("SELECT count(*) FROM authorizations WHERE organisation_id = 'org_bad'")
        == 0
    )


async def test_an_oversized_request_gets_413(metering: MeteringHarness) -> None:
    response = await ask(metering, "org_bad", member_id="m" * 20_000)
    assert response.status_code == 413
    assert response.json()["title"] == "Request body too large"


STRING_FIELDS = ["organisation_id", "member_id", "message_id", "agent_id"]


@pytest.mark.parametrize("field", STRING_FIELDS)
async def test_a_nul_in_a_field_gets_400_and_its_neighbours_their_decision(
    metering: MeteringHarness, db: asyncpg.Connection, field: str
) -> None:
    neighbours = [f"org_near_{field}{n}" for n in range(8)]
    for organisation in neighbours:
        await metering.publish_grants(grant_command(organisation, 100))
    for organisation in neighbours:
        await metering.wait_for(organisation, balance=100)

    responses = await asyncio.gather(
        *(ask(metering, organisation) for organisation in neighbours),
        ask(metering, "org_bad", **{field: "x\x00y"}),
        *(ask(metering, organisation) for organisation in neighbours),
    )

    refused = responses[len(neighbours)]
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    others = responses[: len(neighbours)] + responses[len(neighbours) + 1 :]
    assert [r.status_code for r in others] == [200] * len(others)
    assert {r.json()["decision"] for r in others} == {"allowed"}
    for organisation in neighbours:
        assert await holds_are_consistent(db, organisation) == (100, 20, 20)


async def test_a_request_the_database_refuses_fails_alone_in_its_group(
    metering: MeteringHarness,
) -> None:
    """Below the HTTP validation: the group commit itself isolates a request PostgreSQL refuses
    (a NUL in text) from the others committed with it, other organisations' included."""
    organisations = [f"org_group{n}" for n in range(6)]
    for organisation in organisations:
        await metering.publish_grants(grant_command(organisation, 50))
    for organisation in organisations:
        await metering.wait_for(organisation, balance=50)

    def request(organisation: str, message_id: str) -> Ask:
        return Ask(organisation, "member_1", message_id, None, ESTIMATE)

    asks = [request(o, f"msg_{n}") for n, o in enumerate(organisations)]
    asks.insert(3, request(organisations[3], "msg_bad\x00"))
    outcomes = await asyncio.gather(
        *(metering.authorizer.authorize(a) for a in asks), return_exceptions=True
    )

    failed = [
        (a.message_id, o) for a, o in zip(asks, outcomes, strict=True) if isinstance(o, Exception)
    ]
    assert [m for m, _ in failed] == ["msg_bad\x00"]
    assert classify(failed[0][1]) is Failure.POISON
    decided = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(decided) == len(organisations)
    assert {d.decision for d in decided} == {"allowed"}


async def test_an_organisation_whose_writes_fail_does_not_fail_the_others(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    for organisation in ("org_cursed", "org_fine1", "org_fine2"):
        await metering.publish_grants(grant_command(organisation, 100))
        await metering.wait_for(organisation, balance=100)
    await db.execute(
        """CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$;
           CREATE TRIGGER refuse_cursed BEFORE INSERT ON authorizations FOR EACH ROW
               WHEN (NEW.organisation_id = 'org_cursed') EXECUTE FUNCTION refuse_cursed();"""
    )

    responses = await asyncio.gather(
        *(ask(metering, o) for o in ("org_fine1", "org_cursed", "org_fine2", "org_fine1"))
    )

    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert responses[1].headers["content-type"] == "application/problem+json"
    assert all(responses[i].json()["decision"] == "allowed" for i in (0, 2, 3))
    assert await holds_are_consistent(db, "org_cursed") == (100, 0, 0)


async def test_a_wallet_that_keeps_changing_fails_only_its_own_requests(
    metering: MeteringHarness, clock: FrozenClock, db: asyncpg.Connection, infrastructure
) -> None:
    for organisation in ("org_busy", "org_calm"):
        await metering.publish_grants(grant_command(organisation, 100))
        await metering.wait_for(organisation, balance=100)
    authorizer = Authorizer(
        metering.kernel.pool,
        clock,
        hold_ttl=timedelta(minutes=5),
        topic_prefix=metering.settings.topic_prefix,
        lanes=1,
        max_conflicts=1,
    )
    # Another transaction changes org_busy's wallet while the cycle waits for its row lock.
    other = await asyncpg.connect(
        infrastructure.database_url, server_settings={"search_path": metering.settings.db_schema}
    )
    try:
        change = other.transaction()
        await change.start()
        await other.execute("UPDATE wallets SET balance = 90 WHERE organisation_id = 'org_busy'")
        busy = asyncio.ensure_future(authorizer.authorize(Ask("org_busy", "m", "msg_1", None, 10)))
        calm = asyncio.ensure_future(authorizer.authorize(Ask("org_calm", "m", "msg_2", None, 10)))

        async def waiting_for_the_lock() -> bool:
            return bool(
                await db.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND datname = current_database()"""
                )
            )

        await eventually(waiting_for_the_lock, what="the decision cycle waits for the row")
        await change.commit()
        outcomes = await asyncio.gather(busy, calm, return_exceptions=True)
    finally:
        await other.close()
        await authorizer.close()

    assert isinstance(outcomes[0], ConcurrentChange)
    assert isinstance(outcomes[1], Authorization) and outcomes[1].decision == "allowed"
    response = await ask(metering, "org_busy", "msg_1")  # asking again succeeds
    assert response.status_code == 200 and response.json()["balance"] == 90


async def test_the_hot_authorization_answers_as_the_framework_route(
    metering: MeteringHarness,
) -> None:
    """Authorizations are served in front of the framework; a request it leaves (here: a body
    sent without a length) goes to the framework's route. A decision made by one and asked
    again through the other is the same decision, byte for byte."""
    await funded(metering, "org_hot", 100)

    async def chunked(body: dict) -> httpx.Response:
        async def stream():
            yield orjson.dumps(body)

        return await metering.http.post(
            "/v1/authorizations", content=stream(), headers={"Content-Type": "application/json"}
        )

    body = {"organisation_id": "org_hot", "member_id": "member_1", "message_id": "msg_a"}
    hot = await metering.http.post("/v1/authorizations", json=body)
    framework_replay = await chunked(body)
    other = {**body, "message_id": "msg_b"}
    framework = await chunked(other)
    hot_replay = await metering.http.post("/v1/authorizations", json=other)

    for first, again in ((hot, framework_replay), (framework, hot_replay)):
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.headers["content-type"] == again.headers["content-type"]
        assert again.headers["Idempotent-Replayed"] == "true"
        replayed = again.json()
        assert {**first.json(), "balance": None, "available": None} == {
            **replayed,
            "balance": None,
            "available": None,
        }
