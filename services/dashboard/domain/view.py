"""What the Billing page shows, as pure rules (no I/O): the credit bar's colour (R7), which
actions an owner may take (R3, R12, R13), and the credit runway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

GREEN, AMBER, RED, GREY = "green", "amber", "red", "grey"
PACE_WINDOW_SECONDS = 86_400
"""The pace is taken over at least a day, as metering's low level takes it (a burst in the first
minutes is not a pace)."""
HORIZON_SECONDS = 100 * 365 * 86_400
"""A run-out further away than this is shown as this far (a trickle of use, many credits)."""


def bar_colour(percent_left: int, level: str) -> str:
    """Green above 50 %, amber from 20 % to 50 %, red below 20 %, grey when exhausted."""
    if level == "exhausted" or percent_left <= 0:
        return GREY
    if percent_left > 50:
        return GREEN
    if percent_left >= 20:
        return AMBER
    return RED


@dataclass(frozen=True, slots=True)
class Actions:
    """What the viewer may do, and if not, why."""

    allowed: bool
    reason: str | None
    change_plan: bool
    manage_billing: bool
    cancel: bool
    reactivate: bool


def actions(
    member_id: str, seats: dict[str, Any] | None, subscription: dict[str, Any] | None
) -> Actions:
    """Owners act (R3). Cancel applies to a paid plan not yet cancelled (R12); reactivate to a
    cancelled one within its period (R13); Manage billing to a plan billed through Stripe."""
    owner = seats is not None and member_id in seats.get("owners", [])
    if not owner:
        reason = (
            "Only an owner can change the plan or billing"
            if seats is not None
            else "Who the owners are is not known yet"
        )
        return Actions(False, reason, False, False, False, False)
    plan = (subscription or {}).get("plan")
    paid = plan in ("pro", "max") or (subscription or {}).get("stripe_subscription_id")
    cancelled = bool((subscription or {}).get("cancel_at_period_end"))
    return Actions(
        True,
        None,
        change_plan=plan != "enterprise",
        manage_billing=bool((subscription or {}).get("stripe_subscription_id")),
        cancel=bool(paid) and not cancelled,
        reactivate=cancelled,
    )


@dataclass(frozen=True, slots=True)
class Runway:
    """How long the credits last at this period's pace (credits used since the period began)."""

    runs_out_at: datetime | None
    """None: nothing used yet this period, so no pace to go by."""
    renews_at: datetime
    before_renewal: bool
    """The credits run out before they renew: the low-credit warning, whatever the percentage."""
    per_day: int


def runway(credits: dict[str, Any] | None, now: datetime) -> Runway | None:
    """Where the credits run out at the pace of the current period, if the period is known."""
    if not credits or not credits.get("period_start") or not credits.get("renews_at"):
        return None
    start = datetime.fromisoformat(credits["period_start"])
    renews = datetime.fromisoformat(credits["renews_at"])
    used, left = int(credits["used"]), max(0, int(credits["balance"]))
    elapsed = max(int((now - start).total_seconds()), PACE_WINDOW_SECONDS)
    per_day = used * 86_400 // elapsed
    if left == 0:
        return Runway(now, renews, now < renews, per_day)
    if used <= 0:
        return Runway(None, renews, False, 0)
    runs_out = now + timedelta(seconds=min(left * elapsed // used, HORIZON_SECONDS))
    return Runway(runs_out, renews, runs_out < renews, per_day)
