"""The subscription API for the web app (behind the front proxy, which sends the acting
member's signed identity: `shared.acting`), for readers and for operators.

Reading is for any member; changing the plan, cancelling, reactivating and opening the Billing
Portal are for owners only (R3): anyone else gets 403 with a reason."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.access import READERS, Scope, allow
from shared.acting import Acting
from shared.audit import audited
from shared.events.audit import SYSTEM_ORGANISATION, AuditAction, AuditActionV2
from shared.events.envelope import INT32_MAX, Identifier, OrganisationId
from shared.events.subscriptions import Cycle, Plan, Standing
from shared.http import PROBLEM_RESPONSES, OrganisationPath, Problem

from ..domain.catalogue import EnterpriseTerms
from ..domain.packs import Purchase
from ..domain.subscription import Refused, Subscription
from ..gateway import GatewayUnavailable
from ..packs import CreditPacks
from ..service import Denied, NoSubscription, Subscriptions

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _service(request: Request) -> Subscriptions:
    return request.app.state.parts.subscriptions


class SubscriptionOut(BaseModel):
    organisation_id: str
    plan: Plan
    plan_name: str
    cycle: Cycle | None
    standing: Standing
    monthly_credits: int
    seat_limit: int | None
    """None: unlimited."""
    features: list[str]
    credit_period_start: datetime
    credit_period_end: datetime
    """When credits renew next."""
    paid_period_end: datetime | None
    cancel_at_period_end: bool
    pending_plan: Plan | None
    pending_cycle: Cycle | None
    """A downgrade in force from `paid_period_end`."""
    revision: int


def _out(service: Subscriptions, sub: Subscription) -> SubscriptionOut:
    terms = service.catalogue.terms(sub.plan, sub.enterprise)
    return SubscriptionOut(
        organisation_id=sub.organisation_id,
        plan=sub.plan,
        plan_name=terms.name,
        cycle=sub.cycle,
        standing=sub.standing,
        monthly_credits=terms.monthly_credits,
        seat_limit=terms.seat_limit,
        features=list(terms.features),
        credit_period_start=sub.credit_period_start,
        credit_period_end=sub.credit_period_end,
        paid_period_end=sub.paid_period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        pending_plan=sub.pending_plan,
        pending_cycle=sub.pending_cycle,
        revision=sub.revision,
    )


REFUSALS = (Denied, Refused, NoSubscription)

_UNPROCESSABLE = {
    "unknown_pack",
    "cap_below_pack",
    "cycle_not_offered",
    "enterprise_by_contract",
    "cancel_instead",
    "stripe_invalid_request",
}


def _problem(exc: Exception) -> Problem:
    match exc:
        case Denied():
            return Problem(
                403, exc.reason.replace("_", "-"), "Not allowed", exc.detail, reason=exc.reason
            )
        case Refused():
            status = 422 if exc.reason in _UNPROCESSABLE else 409
            return Problem(
                status, exc.reason.replace("_", "-"), "Refused", exc.detail, reason=exc.reason
            )
        case NoSubscription():
            return Problem(
                404,
                "no-subscription",
                "No subscription for this organisation",
                f"{exc} is not known (yet) to the member directory's feed",
            )
        case GatewayUnavailable():
            return Problem(
                503,
                "stripe-unavailable",
                "Billing is unavailable, try again",
                headers={"Retry-After": "5"},
            )
    raise exc


@router.get(
    "/subscription",
    dependencies=[allow(Scope.FRONT)],
    response_model=SubscriptionOut,
    tags=["subscription"],
)
async def read(acting: Acting, request: Request) -> SubscriptionOut:
    """The acting organisation's subscription: plan, cycle, credits, seats, periods, a pending
    downgrade, a cancellation."""
    service = _service(request)
    try:
        return _out(service, await service.read(acting.organisation_id))
    except NoSubscription as exc:
        raise _problem(exc) from None


class ChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Plan
    cycle: Cycle | None = None
    """`monthly` (default) or `annual` (Pro and Max only)."""


class ChangeOut(BaseModel):
    action: Literal["checkout", "upgraded", "downgrade_scheduled", "downgrade_withdrawn"]
    checkout_url: str | None
    """For `checkout`: redirect the owner there (Stripe Checkout, R4)."""
    subscription: SubscriptionOut


@router.post(
    "/subscription/change",
    dependencies=[allow(Scope.FRONT)],
    response_model=ChangeOut,
    tags=["subscription"],
    responses={403: {"description": "Not an owner"}, 409: {"description": "Does not apply"}},
)
async def change(body: ChangeIn, acting: Acting, request: Request) -> ChangeOut:
    """Change the plan (owners only, R3). From Free: Stripe Checkout (R4). Between paid plans:
    an upgrade at once, the credits topped up; a downgrade at the end of the period (R5)."""
    service = _service(request)
    target = f"{body.plan.value}:{body.cycle.value}" if body.cycle else body.plan.value
    async with audited(
        request, acting.organisation_id, AuditAction.PLAN_CHANGE, refusals=REFUSALS
    ) as entry:
        entry.target = target
        try:
            result = await service.change_plan(
                acting.organisation_id, acting.member_id, body.plan, body.cycle
            )
        except (Denied, Refused, NoSubscription, GatewayUnavailable) as exc:
            raise _problem(exc) from None
        entry.detail = result.action
    return ChangeOut(
        action=result.action,  # type: ignore[arg-type]
        checkout_url=result.checkout_url,
        subscription=_out(service, result.subscription),
    )


@router.post(
    "/subscription/cancel",
    dependencies=[allow(Scope.FRONT)],
    response_model=SubscriptionOut,
    tags=["subscription"],
)
async def cancel(acting: Acting, request: Request) -> SubscriptionOut:
    """Cancel (owners only): in force until the paid period ends, then Free (R12)."""
    service = _service(request)
    async with audited(request, acting.organisation_id, AuditAction.CANCEL, refusals=REFUSALS):
        try:
            return _out(service, await service.cancel(acting.organisation_id, acting.member_id))
        except (Denied, Refused, NoSubscription) as exc:
            raise _problem(exc) from None


@router.post(
    "/subscription/reactivate",
    dependencies=[allow(Scope.FRONT)],
    response_model=SubscriptionOut,
    tags=["subscription"],
)
async def reactivate(acting: Acting, request: Request) -> SubscriptionOut:
    """Withdraw a cancellation within the paid period (owners only): the subscription simply
    continues, no checkout (R13)."""
    service = _service(request)
    organisation = acting.organisation_id
    async with audited(request, organisation, AuditAction.REACTIVATE, refusals=REFUSALS):
        try:
            return _out(service, await service.reactivate(organisation, acting.member_id))
        except (Denied, Refused, NoSubscription) as exc:
            raise _problem(exc) from None


class PortalOut(BaseModel):
    url: str


@router.post(
    "/billing-portal",
    dependencies=[allow(Scope.FRONT)],
    response_model=PortalOut,
    tags=["subscription"],
)
async def billing_portal(acting: Acting, request: Request) -> PortalOut:
    """The Stripe Billing Portal (owners only): payment methods, invoices, billing details
    (R11). Redirect the owner to `url`."""
    organisation = acting.organisation_id
    async with audited(request, organisation, AuditAction.BILLING_PORTAL, refusals=REFUSALS):
        try:
            return PortalOut(url=await _service(request).portal(organisation, acting.member_id))
        except (Denied, Refused, GatewayUnavailable) as exc:
            raise _problem(exc) from None


class PriceOut(BaseModel):
    cycle: Cycle
    per_seat: int
    """In the currency's smallest unit (cents)."""


class PlanOut(BaseModel):
    plan: Plan
    name: str
    summary: str
    monthly_credits: int
    seat_limit: int | None
    features: list[str]
    prices: list[PriceOut]
    """Empty: free, or by contract (Enterprise)."""


class PackOut(BaseModel):
    pack: str
    name: str
    credits: int
    price: int
    """In the currency's smallest unit (cents)."""
    valid_days: int
    """The pack's credits expire this many days after payment (they survive renewals)."""


class CatalogueOut(BaseModel):
    version: int
    currency: str
    plans: list[PlanOut]
    packs: list[PackOut]


@router.get(
    "/catalogue",
    dependencies=[allow(Scope.FRONT, *READERS)],
    response_model=CatalogueOut,
    tags=["catalogue"],
)
async def catalogue(request: Request) -> CatalogueOut:
    """The plans and their prices, for the plan picker (R1, R2)."""
    found = _service(request).catalogue
    return CatalogueOut(
        version=found.version,
        currency=found.currency,
        plans=[
            PlanOut(
                plan=plan,
                name=terms.name,
                summary=terms.summary,
                monthly_credits=terms.monthly_credits,
                seat_limit=terms.seat_limit,
                features=list(terms.features),
                prices=[PriceOut(cycle=c, per_seat=p.per_seat) for c, p in terms.prices.items()],
            )
            for plan, terms in found.plans.items()
        ],
        packs=[
            PackOut(
                pack=pack_id,
                name=pack.name,
                credits=pack.credits,
                price=pack.price,
                valid_days=pack.valid_days,
            )
            for pack_id, pack in found.packs.items()
        ],
    )


# Credit packs and auto-recharge ----------------------------------------------------------------

PackId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_]+$")]
Credits = Annotated[int, Field(strict=True, ge=0, le=10**12)]


def _packs(request: Request) -> CreditPacks:
    return request.app.state.parts.packs


class BuyPackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pack: PackId


class PurchaseOut(BaseModel):
    purchase_id: str
    pack: str
    credits: int
    price: int
    currency: str
    source: Literal["checkout", "auto_recharge"]
    status: Literal["open", "paid", "failed"]
    """`open` until Stripe holds it paid (or an attempt failed)."""
    refunded: int
    """Money refunded so far."""
    clawed_back: int
    """Credits taken back for the refunds (metering takes only what was left)."""
    failure_code: str | None
    paid_at: datetime | None
    expires_at: datetime | None


def _purchase(p: Purchase) -> PurchaseOut:
    return PurchaseOut(
        purchase_id=p.purchase_id,
        pack=p.pack,
        credits=p.credits,
        price=p.price,
        currency=p.currency,
        source=p.source.value,
        status=p.status.value,
        refunded=p.refunded,
        clawed_back=p.clawed_back,
        failure_code=p.failure_code,
        paid_at=p.paid_at,
        expires_at=p.expires_at(),
    )


class BuyPackOut(BaseModel):
    purchase: PurchaseOut
    checkout_url: str
    """Redirect the owner there (Stripe Checkout, payment mode)."""


@router.post(
    "/subscription/credit-packs",
    dependencies=[allow(Scope.FRONT)],
    response_model=BuyPackOut,
    tags=["credit packs"],
)
async def buy_pack(body: BuyPackIn, acting: Acting, request: Request) -> BuyPackOut:
    """Buy a credit pack (owners only): the credits arrive once Stripe holds it paid, exactly
    once, as a bucket that survives renewals until the pack's expiry."""
    async with audited(
        request, acting.organisation_id, AuditActionV2.CREDIT_PACK, refusals=REFUSALS
    ) as entry:
        entry.target = body.pack
        try:
            purchase, url = await _packs(request).buy(
                acting.organisation_id, acting.member_id, body.pack
            )
        except (Denied, Refused, GatewayUnavailable) as exc:
            raise _problem(exc) from None
        entry.detail = f"purchase {purchase.purchase_id}"
    return BuyPackOut(purchase=_purchase(purchase), checkout_url=url)


@router.get(
    "/subscription/credit-purchases",
    dependencies=[allow(Scope.FRONT)],
    response_model=list[PurchaseOut],
    tags=["credit packs"],
)
async def credit_purchases(acting: Acting, request: Request) -> list[PurchaseOut]:
    """The organisation's credit packs, bought or auto-recharged, newest first."""
    return [_purchase(p) for p in await _packs(request).purchases(acting.organisation_id)]


class AutoRechargeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    threshold: Credits
    """When the balance falls to this, one pack is charged."""
    pack: PackId
    monthly_cap: Annotated[int, Field(strict=True, ge=1, le=10**12)]
    """At most this many credits auto-recharged in a calendar month (UTC)."""


class AutoRechargeOut(BaseModel):
    enabled: bool
    threshold: int
    pack: str | None
    monthly_cap: int
    recharged_this_month: int
    armed: bool
    """Charges at the next report at or below the threshold (it re-arms above it)."""
    in_flight: str | None
    """A recharge charged and not yet paid."""
    failures: int
    last_failure: str | None
    disabled_reason: str | None
    """Why it turned itself off (`payment_failed_repeatedly`)."""


async def _recharge_out(packs: CreditPacks, organisation: str) -> AutoRechargeOut:
    rule = await packs.rule(organisation)
    recharged = await packs.recharged_this_month(organisation)
    if rule is None:
        return AutoRechargeOut(
            enabled=False,
            threshold=0,
            pack=None,
            monthly_cap=0,
            recharged_this_month=recharged,
            armed=False,
            in_flight=None,
            failures=0,
            last_failure=None,
            disabled_reason=None,
        )
    return AutoRechargeOut(
        enabled=rule.enabled,
        threshold=rule.threshold,
        pack=rule.pack,
        monthly_cap=rule.monthly_cap,
        recharged_this_month=recharged,
        armed=rule.armed,
        in_flight=rule.in_flight,
        failures=rule.failures,
        last_failure=rule.last_failure,
        disabled_reason=rule.disabled_reason,
    )


@router.get(
    "/subscription/auto-recharge",
    dependencies=[allow(Scope.FRONT)],
    response_model=AutoRechargeOut,
    tags=["credit packs"],
)
async def auto_recharge(acting: Acting, request: Request) -> AutoRechargeOut:
    """The organisation's auto-recharge and what it did this month."""
    return await _recharge_out(_packs(request), acting.organisation_id)


@router.put(
    "/subscription/auto-recharge",
    dependencies=[allow(Scope.FRONT)],
    response_model=AutoRechargeOut,
    tags=["credit packs"],
)
async def set_auto_recharge(
    body: AutoRechargeIn, acting: Acting, request: Request
) -> AutoRechargeOut:
    """Set auto-recharge (owners only): when the balance falls to the threshold, one pack is
    charged off-session to the saved card, never beyond the monthly cap."""
    packs = _packs(request)
    async with audited(
        request, acting.organisation_id, AuditActionV2.AUTO_RECHARGE, refusals=REFUSALS
    ) as entry:
        entry.target = body.pack
        try:
            await packs.configure(
                acting.organisation_id,
                acting.member_id,
                enabled=body.enabled,
                threshold=body.threshold,
                pack_id=body.pack,
                monthly_cap=body.monthly_cap,
            )
        except (Denied, Refused) as exc:
            raise _problem(exc) from None
        entry.detail = (
            f"{'on' if body.enabled else 'off'}, at {body.threshold}, at most "
            f"{body.monthly_cap} a month"
        )
    return await _recharge_out(packs, acting.organisation_id)


@router.get(
    "/organisations/{organisation_id}/subscription",
    dependencies=[allow(*READERS)],
    response_model=SubscriptionOut,
    tags=["operations"],
)
async def subscription_of(organisation_id: OrganisationPath, request: Request) -> SubscriptionOut:
    """Any organisation's subscription, for operators and internal callers."""
    service = _service(request)
    try:
        return _out(service, await service.read(organisation_id))
    except NoSubscription as exc:
        raise _problem(exc) from None


class EnterpriseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_credits: Annotated[int, Field(strict=True, ge=0, le=10**12)]
    seat_limit: Annotated[int, Field(strict=True, ge=1, le=INT32_MAX)] | None = None
    """None: unlimited."""
    features: Annotated[list[Identifier], Field(max_length=100)] = Field(default_factory=list)
    """Default: the catalogue's Enterprise features."""


@router.put(
    "/organisations/{organisation_id}/enterprise",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=SubscriptionOut,
    tags=["operations"],
)
async def set_enterprise(
    organisation_id: OrganisationPath, body: EnterpriseIn, request: Request
) -> SubscriptionOut:
    """An operator puts the organisation on Enterprise with its own terms, at once (R1)."""
    service = _service(request)
    features = tuple(body.features) or service.catalogue.plans[Plan.ENTERPRISE].features
    async with audited(
        request, organisation_id, AuditAction.ENTERPRISE_TERMS, refusals=REFUSALS
    ) as entry:
        entry.detail = (
            f"{body.monthly_credits} credits a month, "
            f"{body.seat_limit or 'unlimited'} seats, features: {', '.join(features)}"
        )
        try:
            sub = await service.set_enterprise(
                organisation_id, EnterpriseTerms(body.monthly_credits, body.seat_limit, features)
            )
        except NoSubscription as exc:
            raise _problem(exc) from None
    return _out(service, sub)


class ReconcileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId | None = None
    """One organisation; none: every paid one."""


class RepairOut(BaseModel):
    organisation_id: str
    fields: list[str]
    before: dict[str, str | bool | None]
    after: dict[str, str | bool | None]


class ReconciliationOut(BaseModel):
    compared: int
    """Subscriptions the gateway holds, compared with the organisations' state."""
    repaired: int
    alerts: int
    skipped: int
    """Organisations changed too recently: left to the next round."""
    repairs: list[RepairOut]


@router.post(
    "/reconciliations",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=ReconciliationOut,
    tags=["operations"],
    responses={503: {"description": "The Stripe gateway did not answer"}},
)
async def reconcile(body: ReconcileIn, request: Request) -> ReconciliationOut:
    """Compare paid organisations with what the Stripe gateway holds of Stripe and repair
    them (Stripe wins for what is paid); every repair is announced with before and after."""
    organisation = body.organisation_id or SYSTEM_ORGANISATION
    async with audited(request, organisation, AuditAction.RECONCILIATION) as entry:
        try:
            found = await request.app.state.parts.reconciler.run(body.organisation_id)
        except GatewayUnavailable as exc:
            raise _problem(exc) from None
        entry.detail = f"{found['compared']} compared, {found['repaired']} repaired"
    return ReconciliationOut.model_validate(found)
