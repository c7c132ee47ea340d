"""The seat rules, pure: convergence of member changes in any order, the count, the check,
the over-limit rule and the coalesced quantity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.seats.domain.seats import (
    Billing,
    MemberState,
    Organisation,
    check,
    count,
    follow_plan,
    newest,
    project,
    quantity_changed,
    quantity_due,
)
from shared.events.members import MemberRole, MemberStatus
from shared.events.subscriptions import Plan

ORG = "org_acme"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def member(
    member_id: str,
    sequence: int,
    status: MemberStatus = MemberStatus.ACTIVE,
    role: MemberRole = MemberRole.MEMBER,
    organisation_id: str = ORG,
) -> MemberState:
    return MemberState(organisation_id, member_id, role, status, sequence)


def apply_in_batches(
    batches: list[list[MemberState]],
) -> tuple[dict[tuple[str, str], MemberState], dict[str, Organisation]]:
    """Run `project` batch after batch, as the consumer does, keeping its stored state."""
    members: dict[tuple[str, str], MemberState] = {}
    orgs: dict[str, Organisation] = {}
    for batch in batches:
        projected = project(newest(batch), dict(members), dict(orgs))
        for m in projected.members:
            members[m.key] = m
        for organisation_id in projected.changed:
            orgs[organisation_id] = projected.organisations[organisation_id]
    return members, orgs


def test_joins_and_deactivations_change_the_count() -> None:
    _, orgs = apply_in_batches(
        [
            [member("m1", 1), member("m2", 1), member("m3", 1)],
            [member("m2", 2, MemberStatus.DEACTIVATED)],
        ]
    )
    assert orgs[ORG].seats == 2
    _, orgs = apply_in_batches(
        [[member("m1", 1)], [member("m1", 2, MemberStatus.DEACTIVATED)], [member("m1", 3)]]
    )
    assert orgs[ORG].seats == 1


def test_an_older_change_never_overrides_a_newer_one() -> None:
    _, orgs = apply_in_batches(
        [[member("m1", 5, MemberStatus.REMOVED)], [member("m1", 1), member("m1", 4)]]
    )
    assert orgs[ORG].seats == 0


def test_role_changes_reach_the_owner_list() -> None:
    _, orgs = apply_in_batches(
        [
            [member("ada", 1, role=MemberRole.OWNER), member("bob", 1)],
            [member("bob", 2, role=MemberRole.OWNER)],
            [member("ada", 2, role=MemberRole.ADMIN)],
        ]
    )
    assert orgs[ORG].owners == ("bob",)
    _, orgs = apply_in_batches(
        [
            [member("ada", 1, role=MemberRole.OWNER)],
            [member("ada", 2, MemberStatus.DEACTIVATED, MemberRole.OWNER)],
        ]
    )
    assert orgs[ORG].owners == ()


def test_a_redelivered_batch_changes_nothing() -> None:
    batch = [member("m1", 1), member("m2", 1, role=MemberRole.OWNER)]
    members, orgs = apply_in_batches([batch])
    again = project(newest(batch), members, dict(orgs))
    assert (again.members, again.changed) == ([], [])


changes = st.lists(
    st.builds(
        member,
        st.sampled_from(["m1", "m2", "m3", "m4"]),
        st.integers(0, 30),
        st.sampled_from(list(MemberStatus)),
        st.sampled_from(list(MemberRole)),
        st.sampled_from(["org_a", "org_b"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(changes, st.randoms(use_true_random=False), st.integers(1, 8))
def test_any_order_and_redelivery_converge_to_the_newest_states(
    events: list[MemberState],
    random,
    batch_size: int,
) -> None:
    # Equal sequences with different states are a producer's bug; keep the first of each.
    unique = list(
        {(e.organisation_id, e.member_id, e.sequence): e for e in reversed(events)}.values()
    )
    shuffled = unique + random.sample(unique, k=len(unique) // 2)  # some redelivered
    random.shuffle(shuffled)
    batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]

    members, orgs = apply_in_batches(batches)

    newest: dict[tuple[str, str], MemberState] = {}
    for e in unique:
        if e.key not in newest or e.sequence > newest[e.key].sequence:
            newest[e.key] = e
    assert members == newest
    for organisation_id in {e.organisation_id for e in unique}:
        seated = [m for m in newest.values() if m.organisation_id == organisation_id and m.seated]
        org = orgs.get(organisation_id, Organisation(organisation_id))
        assert org.seats == len(seated)
        assert org.owners == tuple(sorted(m.member_id for m in seated if m.acting_owner))


def pro(limit: int | None = 5, revision: int = 1, stripe: str | None = "sub_1") -> Billing:
    return Billing(Plan.PRO, limit, stripe, revision)


def test_the_check_refuses_at_the_limit_and_while_over_it() -> None:
    org = Organisation(ORG, seats=4, billing=pro(5))
    assert check(org, 3).allowed
    at_limit = check(Organisation(ORG, seats=5, billing=pro(5)), 3)
    assert (at_limit.allowed, at_limit.reason) == (False, "seat_limit_reached")
    over = check(Organisation(ORG, seats=7, billing=pro(5)), 3)
    assert (over.allowed, over.count.over_limit, over.count.available) == (False, True, 0)


def test_an_active_member_takes_no_new_seat() -> None:
    org = Organisation(ORG, seats=5, billing=pro(5))
    verdict = check(org, 3, member("m1", 1))
    assert (verdict.allowed, verdict.reason) == (True, "already_seated")
    assert not check(org, 3, member("m1", 2, MemberStatus.DEACTIVATED)).allowed


@given(st.integers(0, 10_000))
def test_unlimited_plans_never_refuse(seats: int) -> None:
    org = Organisation(ORG, seats=seats, billing=Billing(Plan.MAX, None, "sub_1", 1))
    verdict = check(org, 3)
    assert verdict.allowed and verdict.count.available is None and not verdict.count.over_limit


def test_the_default_limit_applies_until_a_plan_is_known() -> None:
    assert count(Organisation(ORG, seats=3), 3).over_limit is False
    assert not check(Organisation(ORG, seats=3), 3).allowed
    assert check(Organisation(ORG, seats=300), None).allowed


def test_a_downgrade_below_the_count_marks_the_organisation_over_its_limit() -> None:
    org = Organisation(ORG, seats=8, billing=Billing(Plan.MAX, None, "sub_1", 3), revision=4)
    after = follow_plan(org, pro(5, revision=4))
    assert after is not None and after.seats == 8 and after.revision == 5
    assert count(after, 3).over_limit


def test_an_older_plan_state_is_ignored_and_a_same_limit_one_is_not_announced() -> None:
    org = Organisation(ORG, seats=2, billing=pro(5, revision=7), revision=3)
    assert follow_plan(org, pro(25, revision=6)) is None
    same = follow_plan(org, pro(5, revision=8))
    assert same is not None and same.revision == 3 and same.billing == pro(5, revision=8)


def test_quantities_go_to_stripe_only_for_per_seat_subscriptions_and_coalesce() -> None:
    free = Organisation(ORG, seats=2, billing=Billing(Plan.FREE, 3, None, 1))
    paid = Organisation(ORG, seats=2, billing=pro(revision=2), revision=2)
    assert not quantity_changed(None, free)
    assert quantity_changed(free, paid)
    assert not quantity_changed(paid, Organisation(ORG, seats=2, billing=pro(9, 3), revision=3))
    window = timedelta(seconds=2)
    first = quantity_due(paid, None, NOW, window)
    assert first is not None and (first.quantity, first.due_at) == (2, NOW + window)
    later = Organisation(ORG, seats=0, billing=pro(revision=2), revision=9)
    joined = quantity_due(later, first, NOW + timedelta(seconds=1), window)
    assert joined is not None and (joined.quantity, joined.revision, joined.due_at) == (
        1,
        9,
        NOW + window,
    )
    assert quantity_due(free, None, NOW, window) is None
