"""The pricing modal's choices: for each plan and billing cycle, what it costs, what it gives,
and what choosing it does for this organisation now (the subscription service's rules, R4, R5,
R12, said in advance): Checkout from Free, an upgrade at once with a top-up, a downgrade at
the end of the period, staying (withdraws a pending downgrade), Free by cancelling, and
Enterprise through sales."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RANK = {"free": 0, "pro": 1, "max": 2, "enterprise": 3}
CYCLES = ("monthly", "annual")


@dataclass(frozen=True, slots=True)
class Choice:
    plan: str
    name: str
    cycle: str | None
    per_seat: int | None
    """In the currency's smallest unit, per seat per cycle; None: free or by contract."""
    monthly_credits: int
    seat_limit: int | None
    features: tuple[str, ...]
    annual_saving_percent: int | None
    current: bool
    kind: str
    """`checkout`, `upgrade`, `downgrade`, `withdraw`, `current`, `cancel_instead`,
    `contact_sales`, `refused`."""
    consequence: str

    @property
    def value(self) -> str:
        return f"{self.plan}:{self.cycle}" if self.cycle else self.plan

    @property
    def selectable(self) -> bool:
        return self.kind in {"checkout", "upgrade", "downgrade", "withdraw"}


def choices(
    subscription: dict[str, Any] | None, catalogue: dict[str, Any] | None, period_end: str
) -> list[Choice]:
    """Every plan and cycle of the catalogue, in order, with what choosing it would do."""
    sub = subscription or {}
    plan, cycle = sub.get("plan", "free"), sub.get("cycle")
    pending = (sub.get("pending_plan"), sub.get("pending_cycle"))
    found: list[Choice] = []
    for offered in (catalogue or {}).get("plans", []):
        prices = {p["cycle"]: p["per_seat"] for p in offered.get("prices", [])}
        saving = _saving(prices)
        for offered_cycle in [c for c in CYCLES if c in prices] or [None]:
            kind, consequence = _consequence(
                plan, cycle, pending, sub, offered, offered_cycle, period_end
            )
            found.append(
                Choice(
                    plan=offered["plan"],
                    name=offered["name"],
                    cycle=offered_cycle,
                    per_seat=prices.get(offered_cycle) if offered_cycle else None,
                    monthly_credits=int(offered["monthly_credits"]),
                    seat_limit=offered.get("seat_limit"),
                    features=tuple(offered.get("features", ())),
                    annual_saving_percent=saving if offered_cycle == "annual" else None,
                    current=offered["plan"] == plan and (offered_cycle or None) == (cycle or None),
                    kind=kind,
                    consequence=consequence,
                )
            )
    return found


def _saving(prices: dict[str, int]) -> int | None:
    if "monthly" not in prices or "annual" not in prices or prices["monthly"] <= 0:
        return None
    return round(100 * (1 - prices["annual"] / (12 * prices["monthly"])))


def _consequence(
    plan: str,
    cycle: str | None,
    pending: tuple[str | None, str | None],
    sub: dict[str, Any],
    offered: dict[str, Any],
    offered_cycle: str | None,
    period_end: str,
) -> tuple[str, str]:
    target, name = offered["plan"], offered["name"]
    credits = f"{int(offered['monthly_credits']):,} credits a month"
    if target == "enterprise":
        return "contact_sales", "Set up with our sales team: custom credits, seats and terms."
    if target == plan and (offered_cycle or None) == (cycle or None):
        if pending[0] is not None:
            return "withdraw", (
                f"Keep {name}: withdraws the change to {pending[0].title()} planned for "
                f"{period_end}."
            )
        return "current", "Your current plan."
    if target == "free":
        if plan == "free":
            return "current", "Your current plan."
        return "cancel_instead", (
            f"To move to Free, cancel your plan: it stays in force until {period_end}."
        )
    if not sub.get("stripe_subscription_id"):
        return (
            "checkout",
            f"Pay with Stripe Checkout; in force as soon as you have paid, {credits}.",
        )
    if sub.get("cancel_at_period_end"):
        return "refused", "Reactivate your plan first: it is cancelled."
    upgrade = RANK[target] > RANK[plan] or (
        target == plan and offered_cycle == "annual" and cycle == "monthly"
    )
    if upgrade:
        return "upgrade", f"At once: {credits}, your credits topped up for this period."
    return "downgrade", f"From {period_end}: until then you keep {plan.title()}."
