"""What the page says after an action, in words a person understands. A notice travels as a
code in the page's address (`?outcome=…`, or Stripe's `?checkout=…` and `?portal=…` on the
way back), never as text: a link cannot make the page say something it would not say."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Notice:
    code: str
    tone: str
    """`info`, `warn` or `danger` (the banner's colour)."""
    text: str


_DONE = {
    "upgraded": "Your plan is upgraded: the new credits are yours now.",
    "downgrade_scheduled": "Your plan changes at the end of the current period.",
    "downgrade_withdrawn": "The planned change is withdrawn: you keep your plan.",
    "cancelled": "Your plan is cancelled: it stays in force until the end of the period.",
    "reactivated": "Your plan continues: the cancellation is withdrawn.",
    "checkout_success": "Payment received. Your new plan shows here as soon as Stripe confirms "
    "it, usually within seconds.",
    "checkout_cancelled": "Checkout cancelled: nothing was charged and your plan is unchanged.",
    "portal_returned": "Back from Manage billing: changes made there show here in a moment.",
    "pack_paid": "Payment received. Your credits show here as soon as Stripe confirms it, "
    "usually within seconds.",
    "auto_recharge_saved": "Auto-recharge is saved.",
    "budget_saved": "The budget is saved: it applies from the next message.",
}

_REFUSED = {
    "not_owner": "Only an owner of the organisation can change the plan or billing.",
    "not_a_member": "You are not an active member of this organisation.",
    "already_on_plan": "You are already on this plan.",
    "cancel_instead": "To move to Free, cancel your plan: it stays in force until the end of "
    "the period.",
    "cancelled": "Your plan is cancelled: reactivate it before changing the plan.",
    "cycle_not_offered": "This plan is not offered with that billing cycle.",
    "enterprise_by_contract": "Enterprise is set up with our sales team: contact sales.",
    "nothing_to_cancel": "There is nothing to cancel: Free is not billed.",
    "already_cancelled": "Your plan is already cancelled.",
    "not_cancelled": "Your plan is not cancelled: there is nothing to reactivate.",
    "period_over": "The paid period is over: choose a plan again.",
    "no_customer": "Manage billing opens once the organisation has a paid plan.",
    "no_subscription": "Manage billing opens once the organisation has a paid plan.",
    "unknown_pack": "That credit pack is not on sale.",
    "invalid_budget": "Give a member or an agent, and a cap of zero or more credits (empty: "
    "no cap).",
    "cap_below_pack": "The monthly cap must allow at least one pack.",
    "stripe_unavailable": "Stripe did not answer. Nothing changed; please try again in a moment.",
    "unavailable": "Billing is unavailable right now. Nothing changed; please try again in a "
    "moment.",
}

GENERIC_REFUSAL = "That could not be done, and nothing changed. Please try again."


def done(code: str) -> Notice:
    return Notice(code, "info", _DONE.get(code, "Done."))


def refused(reason: str) -> Notice:
    return Notice(f"refused:{reason}", "danger", _REFUSED.get(reason, GENERIC_REFUSAL))


def from_address(outcome: str, checkout: str, portal: str) -> Notice | None:
    """The notice an arriving address asks for, if any."""
    if outcome.startswith("refused:"):
        return refused(outcome.removeprefix("refused:"))
    if outcome in _DONE:
        return done(outcome)
    if checkout in {"success", "cancelled"}:
        return done(f"checkout_{checkout}")
    if portal == "returned":
        return done("portal_returned")
    return None
