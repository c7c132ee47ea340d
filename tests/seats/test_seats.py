"""Seats against the real broker and database: counts, convergence, the check, the over-limit
rule, owners and the coalesced quantity in Stripe."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.events.members import (
    MemberDeactivatedV1,
    MemberJoinedV1,
    MemberReactivatedV1,
    MemberRemovedV1,
    MemberRole,
    MemberRoleChangedV1,
    MemberStatus,
)
from shared.events.subscriptions import Plan
from shared.testing import eventually
from shared.topics import WORKSPACE_MEMBERS
from tests.seats.conftest import SeatHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")


def organisation() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def test_joins_and_deactivations_change_the_count(seats: SeatHarness) -> None:
    org = organisation()
    await seats.join(org, "m1", "m2", "m3")
    await seats.seats(org, seats_used=3)

    await seats.publish(
        WORKSPACE_MEMBERS,
        seats.member_event(MemberDeactivatedV1, org, "m2", 2, status=MemberStatus.DEACTIVATED),
        seats.member_event(MemberRemovedV1, org, "m3", 2, status=MemberStatus.REMOVED),
    )
    found = await seats.seats(org, seats_used=1)

    assert {m["member_id"]: m["status"] for m in found["members"]} == {
        "m1": "active",
        "m2": "deactivated",
        "m3": "removed",
    }
    announced = await seats.announced(org)
    assert [a["seats_used"] for a in announced][-1] == 1
    assert [a["revision"] for a in announced] == sorted(a["revision"] for a in announced)


async def test_redelivered_and_reordered_events_give_the_same_count(seats: SeatHarness) -> None:
    in_order, shuffled = organisation(), organisation()

    def history(org: str) -> list:
        return [
            seats.member_event(MemberJoinedV1, org, "m1", 1),
            seats.member_event(MemberJoinedV1, org, "m2", 1),
            seats.member_event(MemberDeactivatedV1, org, "m1", 2, status=MemberStatus.DEACTIVATED),
            seats.member_event(MemberReactivatedV1, org, "m1", 3),
            seats.member_event(MemberRemovedV1, org, "m2", 2, status=MemberStatus.REMOVED),
            seats.member_event(MemberJoinedV1, org, "m3", 1),
        ]

    await seats.publish(WORKSPACE_MEMBERS, *history(in_order))
    events = history(shuffled)
    reordered = [events[4], events[3], events[5], events[1], events[0], events[2]]
    await seats.publish(WORKSPACE_MEMBERS, *reordered, *reordered[:3], events[0])
    expected = await seats.seats(in_order, seats_used=2)

    found = await seats.seats(shuffled, seats_used=2)
    await seats.publish(WORKSPACE_MEMBERS, *events)  # everything once more
    await seats.publish(WORKSPACE_MEMBERS, seats.member_event(MemberJoinedV1, shuffled, "m4", 1))
    await seats.seats(shuffled, seats_used=3)  # the redelivery was applied before m4
    assert [(m["member_id"], m["status"]) for m in found["members"]] == [
        (m["member_id"], m["status"]) for m in expected["members"]
    ]


async def test_the_check_refuses_at_the_limit_and_accepts_after_a_deactivation(
    seats: SeatHarness,
) -> None:
    org = organisation()
    await seats.plan(org, Plan.FREE, 3, revision=1)
    await seats.join(org, "m1", "m2", "m3")
    await seats.seats(org, seats_used=3, plan="free")

    refused = await seats.check(org)
    assert refused == {
        "allowed": False,
        "reason": "seat_limit_reached",
        "seats_used": 3,
        "seat_limit": 3,
        "available": 0,
        "over_limit": False,
    }
    assert (await seats.check(org, "m2"))["reason"] == "already_seated"

    await seats.publish(
        WORKSPACE_MEMBERS,
        seats.member_event(MemberDeactivatedV1, org, "m2", 2, status=MemberStatus.DEACTIVATED),
    )
    await seats.seats(org, seats_used=2)
    accepted = await seats.check(org, "m2")  # m2 may come back
    assert (accepted["allowed"], accepted["reason"], accepted["available"]) == (True, None, 1)


async def test_unlimited_plans_never_refuse(seats: SeatHarness) -> None:
    org = organisation()
    await seats.plan(org, Plan.MAX, None, revision=2, stripe_subscription_id="sub_max")
    await seats.join(org, *(f"m{n}" for n in range(40)))
    await seats.seats(org, seats_used=40, plan="max")

    verdict = await seats.check(org)

    assert (verdict["allowed"], verdict["seat_limit"], verdict["available"]) == (True, None, None)


async def test_a_downgrade_below_the_count_marks_the_organisation_over_its_limit(
    seats: SeatHarness,
) -> None:
    org = organisation()
    await seats.plan(org, Plan.PRO, 25, revision=2, stripe_subscription_id="sub_pro")
    await seats.join(org, "m1", "m2", "m3", "m4", "m5")
    await seats.seats(org, seats_used=5, plan="pro")

    await seats.plan(org, Plan.FREE, 3, revision=3)
    found = await seats.seats(org, plan="free", over_limit=True)

    assert (found["seats_used"], found["seat_limit"], found["available"]) == (5, 3, 0)
    assert all(m["status"] == "active" for m in found["members"])  # nobody removed
    assert (await seats.check(org))["reason"] == "seat_limit_reached"
    assert (await seats.announced(org))[-1]["over_limit"] is True
    # an older subscription state arriving late changes nothing
    await seats.plan(org, Plan.PRO, 25, revision=2, stripe_subscription_id="sub_pro")
    await seats.publish(
        WORKSPACE_MEMBERS,
        *(
            seats.member_event(MemberRemovedV1, org, m, 2, status=MemberStatus.REMOVED)
            for m in ("m1", "m2")
        ),
    )
    back = await seats.seats(org, seats_used=3)
    assert (back["over_limit"], back["plan"], (await seats.check(org))["allowed"]) == (
        False,
        "free",
        False,
    )


async def test_role_changes_reach_the_owner_list(seats: SeatHarness) -> None:
    org = organisation()
    await seats.join(org, "ada", role=MemberRole.OWNER)
    await seats.join(org, "bob")
    await seats.seats(org, owners=["ada"], seats_used=2)

    await seats.publish(
        WORKSPACE_MEMBERS,
        seats.member_event(MemberRoleChangedV1, org, "bob", 2, role=MemberRole.OWNER),
        seats.member_event(MemberRoleChangedV1, org, "ada", 2, role=MemberRole.ADMIN),
    )

    found = await seats.seats(org, owners=["bob"])
    assert {m["member_id"]: m["role"] for m in found["members"]} == {"ada": "admin", "bob": "owner"}
    assert (await seats.announced(org))[-1]["owners"] == ["bob"]


async def test_a_burst_of_fifty_joins_becomes_one_quantity_command_with_the_final_count(
    seats: SeatHarness,
) -> None:
    org = organisation()
    await seats.plan(org, Plan.PRO, None, revision=2, stripe_subscription_id="sub_burst")
    await seats.join(org, "ada", role=MemberRole.OWNER)
    await seats.seats(org, seats_used=1, plan="pro")
    for n in range(50):  # fifty joins, one by one, as people accept invitations
        await seats.join(org, f"m{n}")
    await seats.seats(org, seats_used=51)
    assert await seats.quantity_commands(org) == []  # the window is still open

    seats.clock.advance(timedelta(seconds=seats.settings.quantity_coalesce_seconds))

    async def sent() -> list[dict]:
        return await seats.quantity_commands(org)

    (command,) = await eventually(sent, what="the quantity command")
    assert command["type"] == "stripe_subscription.quantity_change_requested.v1"
    assert command["data"]["quantity"] == 51
    # later changes: a newer revision, in a new window
    await seats.publish(
        WORKSPACE_MEMBERS,
        seats.member_event(MemberRemovedV1, org, "m0", 2, status=MemberStatus.REMOVED),
    )
    await seats.seats(org, seats_used=50)
    seats.clock.advance(timedelta(seconds=seats.settings.quantity_coalesce_seconds))

    async def two() -> list[dict] | None:
        found = await seats.quantity_commands(org)
        return found if len(found) == 2 else None

    first, second = await eventually(two, what="a second quantity command")
    assert (second["data"]["quantity"], second["data"]["revision"] > first["data"]["revision"]) == (
        50,
        True,
    )


async def test_free_organisations_send_no_quantity(seats: SeatHarness) -> None:
    org, paid = organisation(), organisation()
    await seats.plan(org, Plan.FREE, 3, revision=1)
    await seats.plan(paid, Plan.PRO, 25, revision=2, stripe_subscription_id="sub_p")
    await seats.join(org, "m1", "m2")
    await seats.join(paid, "m1", "m2")
    await seats.seats(org, seats_used=2, plan="free")
    await seats.seats(paid, seats_used=2, plan="pro")
    seats.clock.advance(timedelta(seconds=10))

    async def paid_sent() -> list[dict]:
        return await seats.quantity_commands(paid)

    (command,) = await eventually(paid_sent, what="the paid organisation's quantity")
    assert command["data"]["quantity"] == 2
    assert await seats.quantity_commands(org) == []


async def test_unknown_organisations_and_bad_input_get_a_problem(seats: SeatHarness) -> None:
    missing = await seats.http.get(f"/v1/organisations/{organisation()}/seat-check")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["reason"] == "unknown_organisation"
    bad = await seats.http.get("/v1/organisations/not-an-org/seats")
    assert bad.status_code in (400, 422)
    control = await seats.http.get(
        f"/v1/organisations/{organisation()}/seat-check", params={"member_id": "a\x00b"}
    )
    assert control.status_code in (400, 422)
    anonymous = await seats.http.get(
        f"/v1/organisations/{organisation()}/seats", headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    organisation_id=st.text(max_size=80) | st.from_regex(r"org_[a-z0-9]{1,8}", fullmatch=True),
    member_id=st.none() | st.text(max_size=140),
)
async def test_generated_requests_get_an_answer_or_a_4xx(
    seats: SeatHarness, organisation_id: str, member_id: str | None
) -> None:
    params = {} if member_id is None else {"member_id": member_id}
    path = quote(organisation_id, safe="")
    for route in ("seat-check", "seats"):
        response = await seats.http.get(f"/v1/organisations/{path}/{route}", params=params)
        assert response.status_code in {200, 400, 404, 422}, (response.status_code, response.text)
        if response.status_code != 200:
            assert response.headers["content-type"] == "application/problem+json"


async def test_the_hot_seat_check_answers_as_the_framework_route(seats: SeatHarness) -> None:
    """The seat check is served in front of the framework; a request it leaves (here: an
    extra query parameter) goes to the framework's route: both give the same answers."""
    org = organisation()
    await seats.plan(org, Plan.FREE, 3, revision=1)
    await seats.join(org, "m1", "m2", "m3")
    await seats.seats(org, seats_used=3, plan="free")

    for target, params in (
        (org, {}),
        (org, {"member_id": "m1"}),
        (org, {"member_id": "stranger"}),
        (organisation(), {}),
    ):
        path = f"/v1/organisations/{target}/seat-check"
        hot = await seats.http.get(path, params=params)
        framework = await seats.http.get(path, params={**params, "trace": "1"})
        assert hot.status_code == framework.status_code, (hot.text, framework.text)
        assert hot.headers["content-type"] == framework.headers["content-type"]
        assert hot.json() == framework.json()
