"""The subscription state machine, pure: plans, periods, renewals, cancellations, Stripe."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.subscriptions.domain.catalogue import Catalogue, EnterpriseTerms
from services.subscriptions.domain.subscription import (
    NeedsCheckout,
    Outcome,
    PriceChange,
    Refused,
    SetCancelAtPeriodEnd,
    StripeFacts,
    Unappliable,
    cancel,
    checkout_completed,
    period_containing,
    reactivate,
    renew,
    request_change,
    set_enterprise,
    start,
    stripe_reported,
    stripe_restored,
)
from services.subscriptions.domain.subscription import action_of as machine_action
from shared.events.subscriptions import Cycle, Plan, Standing, SubscriptionChange

CATALOGUE = Catalogue.load()
FREE, PRO, MAX = (CATALOGUE.plans[p].monthly_credits for p in (Plan.FREE, Plan.PRO, Plan.MAX))


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def on_plan(plan: Plan, cycle: Cycle, when: datetime, created: datetime | None = None) -> Outcome:
    sub = start("org_a", created or when - timedelta(days=40), when, CATALOGUE).subscription
    return checkout_completed(
        sub, plan=plan, cycle=cycle, stripe_subscription_id="sub_1", at=when, catalogue=CATALOGUE
    )


def test_a_new_organisation_is_on_free_renewing_from_its_creation_day() -> None:
    created = at(2026, 1, 31, 9)
    outcome = start("org_a", created, created, CATALOGUE)

    sub = outcome.subscription
    assert (sub.plan, sub.cycle, outcome.change) == (Plan.FREE, None, SubscriptionChange.STARTED)
    (grant,) = outcome.grants
    assert (grant.reason, grant.amount) == ("plan_start", FREE)
    assert (grant.period_start, grant.period_end) == (created, at(2026, 2, 28, 9))
    later = renew(sub, at(2026, 3, 1), CATALOGUE)
    assert [(g.reason, g.period_start, g.period_end) for g in later.grants] == [
        ("renewal_reset", at(2026, 2, 28, 9), at(2026, 3, 31, 9))
    ]


@pytest.mark.parametrize(
    ("anchor", "boundaries"),
    [
        (at(2027, 1, 31), [at(2027, 2, 28), at(2027, 3, 31), at(2027, 4, 30), at(2027, 5, 31)]),
        (at(2028, 1, 31), [at(2028, 2, 29), at(2028, 3, 31), at(2028, 4, 30)]),
        (at(2026, 8, 15, 12), [at(2026, 9, 15, 12), at(2026, 10, 15, 12)]),
    ],
)
def test_an_annual_plan_renews_monthly_on_the_anchor_day_clamped(anchor, boundaries) -> None:
    sub = on_plan(Plan.PRO, Cycle.ANNUAL, anchor).subscription
    starts = []
    for boundary in boundaries:
        assert renew(sub, boundary - timedelta(seconds=1), CATALOGUE).grants == ()
        outcome = renew(sub, boundary, CATALOGUE)
        (grant,) = outcome.grants
        assert (grant.reason, grant.amount, grant.plan) == ("renewal_reset", PRO, Plan.PRO)
        starts.append(grant.period_start)
        sub = outcome.subscription
    assert starts == boundaries
    assert sub.paid_period_end == anchor.replace(year=anchor.year + 1)


def test_after_three_missed_periods_one_reset_for_the_current_one() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    outcome = renew(sub, at(2026, 4, 20), CATALOGUE)

    (grant,) = outcome.grants
    assert (grant.period_start, grant.period_end) == (at(2026, 4, 10), at(2026, 5, 10))
    assert outcome.subscription.paid_period_end == at(2026, 5, 10)
    assert renew(outcome.subscription, at(2026, 4, 21), CATALOGUE).grants == ()


def test_free_to_paid_goes_through_checkout_then_the_plan_is_in_force_at_once() -> None:
    sub = start("org_a", at(2026, 1, 5), at(2026, 1, 5), CATALOGUE).subscription

    needs = request_change(sub, Plan.PRO, Cycle.MONTHLY, CATALOGUE)
    paid = checkout_completed(
        sub,
        plan=Plan.PRO,
        cycle=Cycle.MONTHLY,
        stripe_subscription_id="sub_1",
        at=at(2026, 1, 20),
        catalogue=CATALOGUE,
    )

    assert needs == NeedsCheckout(Plan.PRO, Cycle.MONTHLY, "price_pro_monthly")
    (grant,) = paid.grants
    assert (grant.reason, grant.amount, grant.period_start) == ("plan_start", PRO, at(2026, 1, 20))
    assert paid.subscription.paid_period_end == at(2026, 2, 20)
    assert (
        checkout_completed(
            paid.subscription,
            plan=Plan.PRO,
            cycle=Cycle.MONTHLY,
            stripe_subscription_id="sub_1",
            at=at(2026, 1, 21),
            catalogue=CATALOGUE,
        ).changed
        is False
    )


def test_an_upgrade_tops_up_the_difference_at_once() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription

    outcome = request_change(sub, Plan.MAX, Cycle.MONTHLY, CATALOGUE)

    assert isinstance(outcome, Outcome)
    assert outcome.subscription.plan is Plan.MAX
    (grant,) = outcome.grants
    assert (grant.reason, grant.amount) == ("upgrade_top_up", MAX - PRO)
    assert outcome.commands == (PriceChange("price_max_monthly", "now"),)


def test_a_downgrade_waits_for_the_period_end_then_renews_with_the_lower_allotment() -> None:
    sub = on_plan(Plan.MAX, Cycle.MONTHLY, at(2026, 1, 10)).subscription

    scheduled = request_change(sub, Plan.PRO, Cycle.MONTHLY, CATALOGUE)
    assert isinstance(scheduled, Outcome)
    assert (scheduled.subscription.plan, scheduled.subscription.pending_plan) == (
        Plan.MAX,
        Plan.PRO,
    )
    assert scheduled.grants == ()
    assert scheduled.commands == (PriceChange("price_pro_monthly", "period_end"),)
    assert renew(scheduled.subscription, at(2026, 2, 9), CATALOGUE).changed is False

    applied = renew(scheduled.subscription, at(2026, 2, 10), CATALOGUE)

    assert applied.change is SubscriptionChange.DOWNGRADE_APPLIED
    assert (applied.subscription.plan, applied.subscription.pending_plan) == (Plan.PRO, None)
    assert [(g.reason, g.amount) for g in applied.grants] == [("renewal_reset", PRO)]


def test_cancel_keeps_the_plan_until_the_period_ends_then_free() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10), created=at(2025, 6, 3)).subscription

    cancelled = cancel(sub)
    assert cancelled.commands == (SetCancelAtPeriodEnd(True),)
    assert renew(cancelled.subscription, at(2026, 2, 9), CATALOGUE).changed is False
    fallen = renew(cancelled.subscription, at(2026, 2, 10), CATALOGUE)

    assert fallen.change is SubscriptionChange.FELL_BACK_TO_FREE
    free = fallen.subscription
    assert (free.plan, free.stripe_subscription_id, free.anchor) == (
        Plan.FREE,
        None,
        at(2025, 6, 3),
    )
    (grant,) = fallen.grants
    assert (grant.reason, grant.amount, grant.period_start, grant.period_end) == (
        "plan_start",
        FREE,
        at(2026, 2, 10),
        at(2026, 3, 3),
    )
    with pytest.raises(Refused, match="nothing_to_cancel"):
        cancel(free)


def test_reactivating_within_the_period_continues_unchanged() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    cancelled = cancel(sub).subscription

    back = reactivate(cancelled, at(2026, 1, 25))

    assert back.commands == (SetCancelAtPeriodEnd(False),)
    assert back.grants == ()
    assert replace(back.subscription, revision=0) == replace(sub, revision=0)
    with pytest.raises(Refused, match="not_cancelled"):
        reactivate(back.subscription, at(2026, 1, 26))
    with pytest.raises(Refused, match="period_over"):
        reactivate(cancelled, at(2026, 2, 10))


@pytest.mark.parametrize(
    ("plan", "cycle", "reason"),
    [
        (Plan.FREE, None, "already_on_plan"),
        (Plan.ENTERPRISE, None, "enterprise_by_contract"),
        (Plan.PRO, Cycle.ANNUAL, None),
        (Plan.MAX, Cycle.ANNUAL, None),
    ],
)
def test_requests_that_do_not_apply_are_refused(plan, cycle, reason) -> None:
    sub = start("org_a", at(2026, 1, 5), at(2026, 1, 5), CATALOGUE).subscription
    if reason is None:
        assert isinstance(request_change(sub, plan, cycle, CATALOGUE), NeedsCheckout)
        return
    with pytest.raises(Refused, match=reason):
        request_change(sub, plan, cycle, CATALOGUE)


def test_the_same_plan_again_is_refused_and_annual_only_where_offered() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    with pytest.raises(Refused, match="already_on_plan"):
        request_change(sub, Plan.PRO, Cycle.MONTHLY, CATALOGUE)
    broken = replace(CATALOGUE, plans={**CATALOGUE.plans})
    assert broken.price(Plan.FREE, Cycle.ANNUAL) is None


def facts(version: int, **changes: object) -> StripeFacts:
    base = dict(
        subscription_id="sub_1",
        status="active",
        price_id="price_pro_monthly",
        period_start=at(2026, 1, 10),
        period_end=at(2026, 2, 10),
        cancel_at_period_end=False,
        deleted=False,
        version=version,
    )
    return StripeFacts(**{**base, **changes})  # type: ignore[arg-type]


def test_stripe_reports_converge_and_older_ones_change_nothing() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    newer = stripe_reported(sub, facts(2, cancel_at_period_end=True), at(2026, 1, 12), CATALOGUE)
    older = stripe_reported(newer.subscription, facts(1), at(2026, 1, 12), CATALOGUE)
    same = stripe_reported(newer.subscription, facts(2), at(2026, 1, 12), CATALOGUE)

    assert newer.change is SubscriptionChange.CANCEL_SCHEDULED
    assert newer.subscription.cancel_at_period_end is True
    assert older.changed is False and older.subscription == newer.subscription
    assert same.changed is False


def test_a_report_of_the_withdrawn_downgrade_is_undone_by_the_next_one() -> None:
    """On Max an owner asks for Pro, then for Max again. Stripe's report of the Pro price may
    arrive after the withdrawal: it schedules the downgrade again, and the next report (Max)
    must clear it, or the organisation drops to Pro while Stripe bills Max."""
    sub = on_plan(Plan.MAX, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    scheduled = request_change(sub, Plan.PRO, Cycle.MONTHLY, CATALOGUE)
    assert isinstance(scheduled, Outcome)
    withdrawn = request_change(scheduled.subscription, Plan.MAX, Cycle.MONTHLY, CATALOGUE)
    assert isinstance(withdrawn, Outcome)
    assert machine_action(scheduled.subscription, withdrawn) == "downgrade_withdrawn"
    assert withdrawn.commands == (PriceChange("price_max_monthly", "period_end"),)  # no proration

    late = stripe_reported(
        withdrawn.subscription, facts(2, price_id="price_pro_monthly"), at(2026, 1, 11), CATALOGUE
    )
    assert late.subscription.pending_plan is Plan.PRO  # what Stripe held then
    final = stripe_reported(
        late.subscription, facts(3, price_id="price_max_monthly"), at(2026, 1, 11), CATALOGUE
    )
    assert (final.subscription.plan, final.subscription.pending_plan) == (Plan.MAX, None)
    assert final.grants == ()


def test_the_subscriptions_status_sets_the_standing() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    failed = stripe_reported(sub, facts(2, status="past_due"), at(2026, 1, 12), CATALOGUE)
    assert (failed.subscription.standing, failed.change) == (
        Standing.PAST_DUE,
        SubscriptionChange.PAYMENT_FAILED,
    )
    paid = stripe_reported(failed.subscription, facts(3), at(2026, 1, 13), CATALOGUE)
    assert (paid.subscription.standing, paid.change) == (
        Standing.ACTIVE,
        SubscriptionChange.PAYMENT_RECOVERED,
    )


def test_a_price_the_catalogue_does_not_know_cannot_apply() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    with pytest.raises(Unappliable, match="unknown_price"):
        stripe_reported(sub, facts(2, price_id="price_team_monthly"), at(2026, 1, 12), CATALOGUE)
    free = start("org_a", at(2026, 1, 5), at(2026, 1, 5), CATALOGUE).subscription
    with pytest.raises(Unappliable, match="unknown_price"):
        stripe_reported(free, facts(1, price_id="price_team_monthly"), at(2026, 1, 12), CATALOGUE)


def test_a_second_live_subscription_is_not_applied() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    with pytest.raises(Unappliable, match="another_subscription"):
        stripe_reported(sub, facts(1, subscription_id="sub_2"), at(2026, 1, 12), CATALOGUE)
    ended = facts(1, subscription_id="sub_0", status="canceled", deleted=True)
    assert stripe_reported(sub, ended, at(2026, 1, 12), CATALOGUE).changed is False


def test_a_failed_command_gives_way_to_what_stripe_holds() -> None:
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    reported = stripe_reported(sub, facts(1), at(2026, 1, 10), CATALOGUE).subscription
    cancelled = cancel(reported).subscription
    assert cancelled.cancel_at_period_end is True

    restored = stripe_restored(cancelled, at(2026, 1, 11), CATALOGUE)

    assert restored.subscription.cancel_at_period_end is False
    assert restored.change is SubscriptionChange.REACTIVATED


def test_a_subscription_stripe_deletes_falls_back_to_free() -> None:
    sub = on_plan(Plan.MAX, Cycle.MONTHLY, at(2026, 1, 10)).subscription
    gone = stripe_reported(
        sub, facts(1, deleted=True, status="canceled"), at(2026, 1, 15), CATALOGUE
    )
    assert (gone.change, gone.subscription.plan) == (
        SubscriptionChange.FELL_BACK_TO_FREE,
        Plan.FREE,
    )
    assert [(g.reason, g.amount) for g in gone.grants] == [("plan_start", FREE)]


def test_stripes_period_after_a_clamped_month_keeps_the_anchors_day() -> None:
    """Anchored on the 30th: Stripe's period after February starts Feb 28 and ends Mar 30.
    Credits renew on Mar 30, once, not on Mar 28 as well."""
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2027, 1, 30, 8)).subscription
    reported = stripe_reported(
        sub,
        facts(2, period_start=at(2027, 2, 28, 8), period_end=at(2027, 3, 30, 8)),
        at(2027, 2, 28, 8),
        CATALOGUE,
    )
    sub = reported.subscription
    assert (sub.anchor, sub.paid_period_end) == (at(2027, 1, 30, 8), at(2027, 3, 30, 8))
    assert [g.period_start for g in reported.grants] == [at(2027, 2, 28, 8)]

    assert renew(sub, at(2027, 3, 29), CATALOGUE).grants == ()
    renewed = renew(sub, at(2027, 3, 30, 8), CATALOGUE)
    assert [(g.period_start, g.period_end) for g in renewed.grants] == [
        (at(2027, 3, 30, 8), at(2027, 4, 30, 8))
    ]


def test_a_period_off_the_anchors_schedule_moves_the_anchor() -> None:
    """Stripe's billing cycle was reset (an anchor change in the dashboard): its period
    start is the new anchor."""
    sub = on_plan(Plan.PRO, Cycle.MONTHLY, at(2027, 1, 30, 8)).subscription
    moved = stripe_reported(
        sub,
        facts(2, period_start=at(2027, 2, 15), period_end=at(2027, 3, 15)),
        at(2027, 2, 15),
        CATALOGUE,
    ).subscription
    assert (moved.anchor, moved.paid_period_end) == (at(2027, 2, 15), at(2027, 3, 15))
    assert [g.period_start for g in renew(moved, at(2027, 3, 15), CATALOGUE).grants] == [
        at(2027, 3, 15)
    ]


def test_a_plan_never_starts_before_the_credit_period_in_force() -> None:
    """Stripe's clock a little behind ours: the checkout's instant precedes the Free period
    that started when the organisation was created. The paid credits start with that period
    (metering refuses a period older than its current one)."""
    created = at(2027, 1, 30, 8)
    free = start("org_a", created, created, CATALOGUE).subscription
    paid = checkout_completed(
        free,
        plan=Plan.PRO,
        cycle=Cycle.MONTHLY,
        stripe_subscription_id="sub_1",
        at=created - timedelta(seconds=20),
        catalogue=CATALOGUE,
    )
    (grant,) = paid.grants
    assert (grant.reason, grant.amount, grant.period_start) == ("plan_start", PRO, created)
    assert paid.subscription.credit_period_start == created


def test_a_subscription_reported_before_its_checkout_is_the_same_plan_change() -> None:
    sub = start("org_a", at(2026, 1, 5), at(2026, 1, 5), CATALOGUE).subscription
    reported = stripe_reported(
        sub, facts(1, price_id="price_max_monthly"), at(2026, 1, 10), CATALOGUE
    )
    assert reported.subscription.plan is Plan.MAX
    assert [(g.reason, g.amount) for g in reported.grants] == [("plan_start", MAX)]
    again = checkout_completed(
        reported.subscription,
        plan=Plan.MAX,
        cycle=Cycle.MONTHLY,
        stripe_subscription_id="sub_1",
        at=at(2026, 1, 10),
        catalogue=CATALOGUE,
    )
    assert again.changed is False


def test_an_operator_sets_enterprise_terms_at_once() -> None:
    sub = start("org_a", at(2026, 1, 5), at(2026, 1, 5), CATALOGUE).subscription
    terms = EnterpriseTerms(monthly_credits=750_000, seat_limit=500, features=("saml_sso",))
    outcome = set_enterprise(sub, terms, at(2026, 1, 9), CATALOGUE)
    assert outcome.subscription.plan is Plan.ENTERPRISE
    assert [(g.reason, g.amount) for g in outcome.grants] == [("plan_start", 750_000)]
    renewed = renew(outcome.subscription, at(2026, 2, 9), CATALOGUE)
    assert [(g.reason, g.amount) for g in renewed.grants] == [("renewal_reset", 750_000)]


def test_periods_contain_their_instants() -> None:
    anchor = at(2026, 1, 31, 8)
    assert period_containing(anchor, at(2026, 2, 28, 7)) == (at(2026, 1, 31, 8), at(2026, 2, 28, 8))
    assert period_containing(anchor, at(2026, 2, 28, 8)) == (at(2026, 2, 28, 8), at(2026, 3, 31, 8))
    assert period_containing(anchor, at(2025, 12, 31, 9)) == (
        at(2025, 12, 31, 8),
        at(2026, 1, 31, 8),
    )
