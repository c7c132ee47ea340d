"""The plan catalogue (R1, R2): data, not code. A versioned file (`catalogue/plans.v1.json`)
names, per plan, the monthly credit allotment, how many unused credits roll over (none by
default), the seat limit (null: unlimited), the features, and the price per seat per cycle with
its Stripe price id (annual for Pro and Max only); and the credit packs on sale. Money
is in the currency's smallest unit (cents), as integers. Enterprise's values in the file are
defaults: an operator sets each Enterprise organisation's own (`EnterpriseTerms`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.events.subscriptions import Cycle, Plan

DEFAULT = Path(__file__).resolve().parents[1] / "catalogue" / "plans.v1.json"

RANK = {Plan.FREE: 0, Plan.PRO: 1, Plan.MAX: 2, Plan.ENTERPRISE: 3}
"""Upgrades go up this order, downgrades down."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


StripePriceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]


class Price(_Strict):
    per_seat: Annotated[int, Field(strict=True, ge=0)]
    stripe_price_id: StripePriceId
    """What new subscriptions of the plan are billed at."""
    also_billed_as: tuple[StripePriceId, ...] = ()
    """Other Stripe prices of the same plan and cycle that existing subscriptions may still be
    billed at (an earlier or a regional price): reports naming them are the plan too."""


class PlanTerms(_Strict):
    name: str
    summary: str
    monthly_credits: Annotated[int, Field(strict=True, ge=0)]
    rollover_cap: Annotated[int, Field(strict=True, ge=0)] | None = None
    """Up to this many unused credits of a period carry into the next (none: nothing)."""
    seat_limit: Annotated[int, Field(strict=True, ge=1)] | None
    features: tuple[str, ...]
    prices: Mapping[Cycle, Price] = Field(default_factory=dict)


class Pack(_Strict):
    """A credit pack: bought once (Checkout in payment mode, or by auto-recharge); its credits
    are a bucket of their own that survives renewals and expires after `valid_days`."""

    name: str
    credits: Annotated[int, Field(strict=True, ge=1, le=10**9)]
    price: Annotated[int, Field(strict=True, ge=1, le=10**9)]
    """In the currency's smallest unit (cents)."""
    stripe_price_id: StripePriceId
    valid_days: Annotated[int, Field(strict=True, ge=1, le=3660)]


PackId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_]+$")]


class _File(_Strict):
    version: int
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    plans: Mapping[Plan, PlanTerms]
    packs: Mapping[PackId, Pack] = Field(default_factory=dict)


@dataclass(frozen=True)
class EnterpriseTerms:
    """One Enterprise organisation's terms, set by an operator."""

    monthly_credits: int
    seat_limit: int | None
    features: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    version: int
    currency: str
    plans: Mapping[Plan, PlanTerms]
    packs: Mapping[str, Pack] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DEFAULT) -> Catalogue:
        data = _File.model_validate_json(path.read_bytes())
        missing = set(Plan) - set(data.plans)
        if missing:
            raise ValueError(f"the catalogue lacks {sorted(missing)}")
        for plan, terms in data.plans.items():
            if Cycle.ANNUAL in terms.prices and plan not in (Plan.PRO, Plan.MAX):
                raise ValueError(f"{plan.value} cannot have an annual price (R2)")
        ids = [
            price_id
            for terms in data.plans.values()
            for price in terms.prices.values()
            for price_id in (price.stripe_price_id, *price.also_billed_as)
        ]
        if len(ids) != len(set(ids)):
            raise ValueError("a Stripe price may bill one plan and cycle only")
        ids += [pack.stripe_price_id for pack in data.packs.values()]
        if len(ids) != len(set(ids)):
            raise ValueError("a pack's Stripe price may bill nothing else")
        return cls(data.version, data.currency, data.plans, data.packs)

    def terms(self, plan: Plan, enterprise: EnterpriseTerms | None = None) -> PlanTerms:
        terms = self.plans[plan]
        if plan is Plan.ENTERPRISE and enterprise is not None:
            return terms.model_copy(
                update={
                    "monthly_credits": enterprise.monthly_credits,
                    "seat_limit": enterprise.seat_limit,
                    "features": enterprise.features,
                }
            )
        return terms

    def price(self, plan: Plan, cycle: Cycle) -> Price | None:
        return self.plans[plan].prices.get(cycle)

    def plan_of_price(self, stripe_price_id: str) -> tuple[Plan, Cycle] | None:
        for plan, terms in self.plans.items():
            for cycle, price in terms.prices.items():
                if (
                    stripe_price_id == price.stripe_price_id
                    or stripe_price_id in price.also_billed_as
                ):
                    return plan, cycle
        return None
