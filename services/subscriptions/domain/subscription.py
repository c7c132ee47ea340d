"""An organisation's subscription as a state machine (R1–R5, R8, R12, R13). Pure: no I/O, no
clock; every transition takes `now` and returns the new state with its effects (credit grants
for metering, commands for the Stripe gateway, and the change to announce).

Periods. Credits renew monthly on the anchor's day of the month, clamped to the month's end
(an anchor on the 31st renews on Feb 28 or 29, Mar 31, Apr 30), also within annual plans (R8).
The anchor is the organisation's creation on Free, Stripe's billing period start on paid plans,
the moment an operator set Enterprise. A transition that starts a plan mid-period (a checkout,
a fall back to Free) starts a credit period at that moment, ending on the anchor's next
boundary. After downtime an organisation gets one reset, for the period containing now.

Grants carry keys that metering applies once per organisation. A renewal's is its period
(`renew:<start>`): whoever computes it (two scheduler instances, the scheduler and a Stripe
report) computes the same key. A plan's start and an upgrade happen once, with the state
change that makes them; their keys also name the revision (`start:<plan>:<at>:r<revision>`,
`upgrade:<from>-<to>:<period start>:r<revision>`), so two such changes in one period never
share a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from shared.calendar import add_months
from shared.events.subscriptions import Cycle, Plan, Standing, SubscriptionChange

from .catalogue import RANK, Catalogue, EnterpriseTerms


class Refused(Exception):
    """The request does not apply to this subscription; nothing changes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Unappliable(Exception):
    """A report of Stripe's that cannot be applied as it is: nothing changes, and the report
    is parked (replayable once the cause is fixed). `reason`: `unknown_price` (the catalogue
    has no plan for what Stripe bills), `another_subscription` (Stripe bills the organisation
    on two live subscriptions), `checkout_mismatch`, `unknown_organisation`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Grant:
    reason: str
    """`plan_start`, `renewal_reset` or `upgrade_top_up` (metering's grant reasons)."""
    amount: int
    period_key: str
    period_start: datetime | None
    period_end: datetime | None
    plan: Plan


@dataclass(frozen=True, slots=True)
class PriceChange:
    price_id: str
    timing: str
    """`now` (an upgrade, prorated) or `period_end` (a downgrade)."""


@dataclass(frozen=True, slots=True)
class SetCancelAtPeriodEnd:
    cancel: bool


Command = PriceChange | SetCancelAtPeriodEnd


@dataclass(frozen=True, slots=True)
class Subscription:
    organisation_id: str
    created_at: datetime
    """The organisation's creation: Free's anchor."""
    plan: Plan
    cycle: Cycle | None
    standing: Standing
    anchor: datetime
    credit_period_start: datetime
    credit_period_end: datetime
    paid_period_end: datetime | None
    cancel_at_period_end: bool
    pending_plan: Plan | None
    pending_cycle: Cycle | None
    stripe_subscription_id: str | None
    stripe_version: datetime | None
    """Of reports in the first version of the gateway's events: Stripe's event time."""
    revision: int
    enterprise: EnterpriseTerms | None = None
    stripe_facts: StripeFacts | None = None
    """The newest state of the Stripe subscription applied (`stripe_facts.version` orders
    the gateway's reports): what Stripe holds, as opposed to what an owner asked for since."""

    @property
    def paid(self) -> bool:
        """Billed through Stripe."""
        return self.stripe_subscription_id is not None

    @property
    def next_renewal_at(self) -> datetime:
        if self.paid_period_end is not None and self.paid_period_end < self.credit_period_end:
            return self.paid_period_end
        return self.credit_period_end


@dataclass(frozen=True, slots=True)
class Outcome:
    subscription: Subscription
    change: SubscriptionChange | None
    grants: tuple[Grant, ...] = ()
    commands: tuple[Command, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.change is not None

    def merged_after(self, earlier: Outcome) -> Outcome:
        """`earlier`, then this: this state, the effects of both, this change (else
        earlier's)."""
        return Outcome(
            self.subscription,
            self.change or earlier.change,
            earlier.grants + self.grants,
            earlier.commands + self.commands,
        )


def period_containing(anchor: datetime, at: datetime) -> tuple[datetime, datetime]:
    """The monthly period, on the anchor's day, that contains `at`."""
    months = (at.year - anchor.year) * 12 + at.month - anchor.month
    start = add_months(anchor, months, anchor_day=anchor.day)
    if start > at:
        months -= 1
    elif add_months(anchor, months + 1, anchor_day=anchor.day) <= at:
        months += 1
    return (
        add_months(anchor, months, anchor_day=anchor.day),
        add_months(anchor, months + 1, anchor_day=anchor.day),
    )


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _allotment(catalogue: Catalogue, sub: Subscription) -> int:
    return catalogue.terms(sub.plan, sub.enterprise).monthly_credits


def _bump(sub: Subscription, **changes: object) -> Subscription:
    return replace(sub, revision=sub.revision + 1, **changes)  # type: ignore[arg-type]


def _starting(sub: Subscription, catalogue: Catalogue, at: datetime) -> tuple[Subscription, Grant]:
    """The plan in `sub` starts at `at`: a credit period from `at` to the anchor's next
    boundary, with the plan's whole allotment (`plan_start`). Never before the credit period
    in force starts (Stripe's clock may be behind ours by a little): metering refuses a
    period older than its current one."""
    at = max(at, sub.credit_period_start)
    _, end = period_containing(sub.anchor, at)
    grant = Grant(
        "plan_start",
        _allotment(catalogue, sub),
        f"start:{sub.plan.value}:{_iso(at)}:r{sub.revision}",
        at,
        end,
        sub.plan,
    )
    return replace(sub, credit_period_start=at, credit_period_end=end), grant


def start(
    organisation_id: str, created_at: datetime, now: datetime, catalogue: Catalogue
) -> Outcome:
    """A new organisation is on Free, with Free's credits, renewing from its creation day."""
    sub = Subscription(
        organisation_id=organisation_id,
        created_at=created_at,
        plan=Plan.FREE,
        cycle=None,
        standing=Standing.ACTIVE,
        anchor=created_at,
        credit_period_start=now,
        credit_period_end=now,
        paid_period_end=None,
        cancel_at_period_end=False,
        pending_plan=None,
        pending_cycle=None,
        stripe_subscription_id=None,
        stripe_version=None,
        revision=1,
    )
    sub, grant = _starting(sub, catalogue, max(now, created_at))
    return Outcome(sub, SubscriptionChange.STARTED, (grant,))


# Requests from an owner ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedsCheckout:
    """From Free (or a contract) to a paid plan: Stripe Checkout, then the plan (R4)."""

    plan: Plan
    cycle: Cycle
    price_id: str


def request_change(
    sub: Subscription, plan: Plan, cycle: Cycle | None, catalogue: Catalogue
) -> NeedsCheckout | Outcome:
    """An owner asks for another plan (R4, R5)."""
    if plan is Plan.ENTERPRISE:
        raise Refused("enterprise_by_contract", "Enterprise is set up with the sales team")
    if plan is Plan.FREE:
        if sub.plan is Plan.FREE:
            raise Refused("already_on_plan", "the organisation is on Free")
        raise Refused("cancel_instead", "to go back to Free, cancel the subscription (R12)")
    cycle = cycle or Cycle.MONTHLY
    price = catalogue.price(plan, cycle)
    if price is None:
        raise Refused("cycle_not_offered", f"{plan.value} has no {cycle.value} billing (R2)")
    if (plan, cycle) == (sub.plan, sub.cycle):
        if sub.pending_plan is None:
            raise Refused("already_on_plan", f"the organisation is on {plan.value} {cycle.value}")
        # Staying on the current plan withdraws the pending downgrade: the price paid for
        # this period again, without proration (nothing more is owed).
        return Outcome(
            _bump(sub, pending_plan=None, pending_cycle=None),
            SubscriptionChange.PLAN_CHANGED,
            commands=(PriceChange(price.stripe_price_id, "period_end"),),
        )
    if not sub.paid:
        return NeedsCheckout(plan, cycle, price.stripe_price_id)
    if sub.cancel_at_period_end:
        raise Refused("cancelled", "reactivate the subscription before changing its plan")
    if _is_upgrade(sub, plan, cycle):
        before = _allotment(catalogue, sub)
        after_sub = _bump(sub, plan=plan, cycle=cycle, pending_plan=None, pending_cycle=None)
        difference = _allotment(catalogue, after_sub) - before
        grants = ()
        if difference > 0:
            grants = (
                Grant(
                    "upgrade_top_up",
                    difference,
                    f"upgrade:{sub.plan.value}-{plan.value}:{_iso(sub.credit_period_start)}"
                    f":r{after_sub.revision}",
                    None,
                    None,
                    plan,
                ),
            )
        return Outcome(
            after_sub,
            SubscriptionChange.PLAN_CHANGED,
            grants,
            (PriceChange(price.stripe_price_id, "now"),),
        )
    return Outcome(
        _bump(sub, pending_plan=plan, pending_cycle=cycle),
        SubscriptionChange.DOWNGRADE_SCHEDULED,
        commands=(PriceChange(price.stripe_price_id, "period_end"),),
    )


def action_of(before: Subscription, outcome: Outcome) -> str:
    """What an owner's plan change did: `upgraded`, `downgrade_scheduled` or
    `downgrade_withdrawn`."""
    after = outcome.subscription
    if after.pending_plan is not None:
        return "downgrade_scheduled"
    if before.pending_plan is not None and (after.plan, after.cycle) == (before.plan, before.cycle):
        return "downgrade_withdrawn"
    return "upgraded"


def cancel(sub: Subscription) -> Outcome:
    """In force until the paid period ends, then Free (R12)."""
    if not sub.paid:
        raise Refused("nothing_to_cancel", f"the organisation is on {sub.plan.value}, not billed")
    if sub.cancel_at_period_end:
        raise Refused("already_cancelled", "the subscription is already cancelled")
    return Outcome(
        _bump(sub, cancel_at_period_end=True, pending_plan=None, pending_cycle=None),
        SubscriptionChange.CANCEL_SCHEDULED,
        commands=(SetCancelAtPeriodEnd(True),),
    )


def reactivate(sub: Subscription, now: datetime) -> Outcome:
    """Within the paid period, the cancellation is withdrawn and nothing else changes (R13)."""
    if not sub.cancel_at_period_end:
        raise Refused("not_cancelled", "the subscription is not cancelled")
    if sub.paid_period_end is not None and sub.paid_period_end <= now:
        raise Refused("period_over", "the paid period is over: choose a plan again")
    return Outcome(
        _bump(sub, cancel_at_period_end=False),
        SubscriptionChange.REACTIVATED,
        commands=(SetCancelAtPeriodEnd(False),),
    )


# What Stripe reports (through the gateway) --------------------------------------------------


def checkout_completed(
    sub: Subscription,
    *,
    plan: Plan,
    cycle: Cycle,
    stripe_subscription_id: str,
    at: datetime,
    catalogue: Catalogue,
) -> Outcome:
    """The owner paid: the plan is in force at once, with its whole allotment (R4). A second
    paid subscription while one is in force is not applied: Stripe bills both, and an
    operator must settle which stays (`Unappliable`)."""
    if sub.stripe_subscription_id == stripe_subscription_id:
        return Outcome(sub, None)
    if sub.paid:
        raise Unappliable(
            "another_subscription",
            f"{stripe_subscription_id} was paid while {sub.stripe_subscription_id} is in force",
        )
    months = 12 if cycle is Cycle.ANNUAL else 1
    started = _bump(
        sub,
        plan=plan,
        cycle=cycle,
        standing=Standing.ACTIVE,
        anchor=at,
        paid_period_end=add_months(at, months),
        cancel_at_period_end=False,
        pending_plan=None,
        pending_cycle=None,
        stripe_subscription_id=stripe_subscription_id,
        stripe_facts=None,
        stripe_version=None,
        enterprise=None,
    )
    started, grant = _starting(started, catalogue, at)
    return Outcome(started, SubscriptionChange.PLAN_CHANGED, (grant,))


@dataclass(frozen=True, slots=True)
class StripeFacts:
    """A Stripe subscription as the gateway observed it."""

    subscription_id: str
    status: str
    price_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool
    deleted: bool
    version: int | None
    """The gateway's version of this state (its reports v2): higher is newer."""
    quantity: int | None = None
    legacy_created: datetime | None = None
    """Reports v1 only (no `version`): Stripe's event time, whole seconds."""

    @property
    def live(self) -> bool:
        return not self.deleted and self.status in _LIVE


_LIVE = {"active", "trialing", "past_due", "unpaid"}
_PAST_DUE = {"past_due", "unpaid"}
_ENDED = {"canceled", "incomplete_expired"}


def _newer(sub: Subscription, facts: StripeFacts, force: bool) -> bool:
    """Whether `facts` is newer than what `sub` applied of its subscription. `force` also
    takes the same version again (a reconciliation, a command that failed): Stripe's state
    then overrides what was asked for since."""
    applied = sub.stripe_facts
    if applied is not None and applied.subscription_id != facts.subscription_id:
        applied = None  # of an earlier subscription
    if facts.version is not None:
        held = applied.version if applied else None
        return held is None or facts.version > held or (force and facts.version == held)
    if applied is not None and applied.version is not None:
        return False  # a report of the first version, after reports of the second
    return facts.legacy_created is not None and (
        sub.stripe_version is None or facts.legacy_created > sub.stripe_version
    )


def stripe_reported(
    sub: Subscription,
    facts: StripeFacts,
    now: datetime,
    catalogue: Catalogue,
    *,
    force: bool = False,
) -> Outcome:
    """Stripe is the truth for what is paid: the state follows its newest report, whatever
    was asked for meanwhile. Older reports, and reports of an ended subscription that is not
    the organisation's, change nothing. Raises `Unappliable` for a report that cannot apply
    (a price the catalogue does not know, a second live subscription)."""
    if facts.subscription_id != sub.stripe_subscription_id:
        return _another_subscription(sub, facts, now, catalogue)
    if not _newer(sub, facts, force):
        return Outcome(sub, None)
    reported = _plan_of(catalogue, facts)
    updated = replace(
        sub, stripe_facts=facts, stripe_version=facts.legacy_created or sub.stripe_version
    )
    if facts.deleted or facts.status in _ENDED:
        return fall_back_to_free(updated, now, catalogue)
    change: SubscriptionChange | None = None
    standing = (
        Standing.PAST_DUE
        if facts.status in _PAST_DUE
        else Standing.ACTIVE
        if facts.status in ("active", "trialing")
        else sub.standing
    )
    if standing is not sub.standing:
        updated = replace(updated, standing=standing)
        change = (
            SubscriptionChange.PAYMENT_FAILED
            if standing is Standing.PAST_DUE
            else SubscriptionChange.PAYMENT_RECOVERED
        )
    if facts.cancel_at_period_end != sub.cancel_at_period_end:
        updated = replace(updated, cancel_at_period_end=facts.cancel_at_period_end)
        change = (
            SubscriptionChange.CANCEL_SCHEDULED
            if facts.cancel_at_period_end
            else SubscriptionChange.REACTIVATED
        )
    if facts.period_start is not None and facts.period_end is not None:
        anchor = sub.anchor if _on_schedule(sub.anchor, facts.period_start) else facts.period_start
        if facts.period_end != sub.paid_period_end or anchor != sub.anchor:
            updated = replace(updated, anchor=anchor, paid_period_end=facts.period_end)
            change = change or SubscriptionChange.BILLING_UPDATED
    grants: tuple[Grant, ...] = ()
    if reported is not None:
        if reported == (updated.plan, updated.cycle):
            if updated.pending_plan is not None:  # the downgrade was withdrawn
                updated = replace(updated, pending_plan=None, pending_cycle=None)
                change = SubscriptionChange.PLAN_CHANGED
        elif reported == (updated.pending_plan, updated.pending_cycle):
            pass  # the downgrade, billed from the next period: it stays pending until then
        elif _is_upgrade(updated, *reported):
            upgraded = request_change(
                replace(updated, cancel_at_period_end=False, pending_plan=None, pending_cycle=None),
                *reported,
                catalogue,
            )
            assert isinstance(upgraded, Outcome)
            updated = replace(
                upgraded.subscription,
                cancel_at_period_end=updated.cancel_at_period_end,
                revision=updated.revision,
            )
            grants, change = upgraded.grants, SubscriptionChange.PLAN_CHANGED
        else:
            updated = replace(updated, pending_plan=reported[0], pending_cycle=reported[1])
            change = SubscriptionChange.DOWNGRADE_SCHEDULED
    if change is None:
        return Outcome(updated, None)
    outcome = Outcome(_bump(updated), change, grants)
    renewed = renew(outcome.subscription, now, catalogue)
    return renewed.merged_after(outcome) if renewed.changed else outcome


def _on_schedule(anchor: datetime, at: datetime) -> bool:
    """Whether `at` starts one of the anchor's periods. Stripe's period after a clamped month
    (Feb 28 for an anchor on the 30th) is on the schedule: the anchor keeps its day."""
    return period_containing(anchor, at)[0] == at


def _plan_of(catalogue: Catalogue, facts: StripeFacts) -> tuple[Plan, Cycle] | None:
    if facts.price_id is None:
        return None
    found = catalogue.plan_of_price(facts.price_id)
    if found is None and not facts.deleted and facts.status not in _ENDED:
        raise Unappliable(
            "unknown_price",
            f"Stripe bills {facts.price_id} on {facts.subscription_id}; the catalogue has no "
            "plan with that price",
        )
    return found


def _is_upgrade(sub: Subscription, plan: Plan, cycle: Cycle) -> bool:
    return RANK[plan] > RANK[sub.plan] or (
        plan is sub.plan and cycle is Cycle.ANNUAL and sub.cycle is Cycle.MONTHLY
    )


def _another_subscription(
    sub: Subscription, facts: StripeFacts, now: datetime, catalogue: Catalogue
) -> Outcome:
    """A report of a subscription that is not the organisation's current one."""
    if not facts.live:
        return Outcome(sub, None)  # an ended one (replaced, or cancelled long ago)
    if sub.paid:
        raise Unappliable(
            "another_subscription",
            f"Stripe bills {sub.organisation_id} on {facts.subscription_id} while its plan is "
            f"paid by {sub.stripe_subscription_id}",
        )
    if sub.plan is not Plan.FREE:
        return Outcome(sub, None)  # Enterprise by contract: its old subscription is ending
    reported = _plan_of(catalogue, facts)
    if reported is None:
        raise Unappliable("unknown_price", f"{facts.subscription_id} has no price")
    # Paid (its checkout's report comes later, or never): the same as the checkout.
    started = checkout_completed(
        sub,
        plan=reported[0],
        cycle=reported[1],
        stripe_subscription_id=facts.subscription_id,
        at=min(facts.period_start or now, now),
        catalogue=catalogue,
    )
    return stripe_reported(started.subscription, facts, now, catalogue).merged_after(started)


def stripe_restored(sub: Subscription, now: datetime, catalogue: Catalogue) -> Outcome:
    """A command to Stripe failed: what Stripe holds (its newest state applied) stands again
    over what an owner asked for."""
    if sub.stripe_facts is None or sub.stripe_facts.subscription_id != sub.stripe_subscription_id:
        return Outcome(sub, None)
    return stripe_reported(sub, sub.stripe_facts, now, catalogue, force=True)


def fall_back_to_free(sub: Subscription, at: datetime, catalogue: Catalogue) -> Outcome:
    """The paid period ended after a cancellation, or Stripe deleted the subscription: Free,
    renewing from the organisation's creation day, with Free's credits from `at`."""
    if not sub.paid and sub.plan is Plan.FREE:
        return Outcome(sub, None)
    free = _bump(
        sub,
        plan=Plan.FREE,
        cycle=None,
        standing=Standing.ACTIVE,
        anchor=sub.created_at,
        paid_period_end=None,
        cancel_at_period_end=False,
        pending_plan=None,
        pending_cycle=None,
        stripe_subscription_id=None,
        enterprise=None,
    )
    free, grant = _starting(free, catalogue, at)
    return Outcome(free, SubscriptionChange.FELL_BACK_TO_FREE, (grant,))


# Renewal ------------------------------------------------------------------------------------


def renew(sub: Subscription, now: datetime, catalogue: Catalogue) -> Outcome:
    """What the passing of time does (R5, R8, R12): at the paid period's end a cancellation
    falls back to Free and a pending downgrade takes effect; at a credit period's end the
    credits of the period containing `now` are granted. One grant per transition, whatever
    the downtime: it is for the period containing `now`."""
    outcome = Outcome(sub, None)
    if sub.paid and sub.paid_period_end is not None and sub.paid_period_end <= now:
        boundary = sub.paid_period_end
        if sub.cancel_at_period_end:
            free_start, _ = period_containing(sub.created_at, now)
            return fall_back_to_free(sub, max(boundary, free_start), catalogue)
        downgrade = sub.pending_plan is not None
        cycle = sub.pending_cycle or sub.cycle
        paid_end = boundary
        while paid_end <= now:  # Stripe's report of the new period corrects this estimate
            paid_end = add_months(
                paid_end, 12 if cycle is Cycle.ANNUAL else 1, anchor_day=sub.anchor.day
            )
        outcome = Outcome(
            _bump(
                sub,
                plan=sub.pending_plan or sub.plan,
                cycle=cycle,
                pending_plan=None,
                pending_cycle=None,
                paid_period_end=paid_end,
            ),
            SubscriptionChange.DOWNGRADE_APPLIED if downgrade else SubscriptionChange.RENEWED,
        )
        sub = outcome.subscription
    start_, end = period_containing(sub.anchor, now)
    if start_ > sub.credit_period_start:
        renewed = _bump(sub, credit_period_start=start_, credit_period_end=end)
        grant = Grant(
            "renewal_reset",
            _allotment(catalogue, renewed),
            f"renew:{_iso(start_)}",
            start_,
            end,
            renewed.plan,
        )
        change = outcome.change or SubscriptionChange.RENEWED
        return Outcome(renewed, change, (*outcome.grants, grant), outcome.commands)
    if end != sub.credit_period_end and sub.credit_period_end <= now:
        realigned = _bump(sub, credit_period_end=end)
        return Outcome(realigned, outcome.change or SubscriptionChange.BILLING_UPDATED)
    return outcome


def set_enterprise(
    sub: Subscription, terms: EnterpriseTerms, now: datetime, catalogue: Catalogue
) -> Outcome:
    """An operator puts the organisation on Enterprise with its own terms, at once. A Stripe
    subscription it had is cancelled at its period's end (the contract replaces it)."""
    commands: tuple[Command, ...] = (SetCancelAtPeriodEnd(True),) if sub.paid else ()
    enterprise = _bump(
        sub,
        plan=Plan.ENTERPRISE,
        cycle=None,
        standing=Standing.ACTIVE,
        anchor=now,
        paid_period_end=None,
        cancel_at_period_end=False,
        pending_plan=None,
        pending_cycle=None,
        stripe_subscription_id=None,
        enterprise=terms,
    )
    enterprise, grant = _starting(enterprise, catalogue, now)
    return Outcome(enterprise, SubscriptionChange.PLAN_CHANGED, (grant,), commands)
