"""A randomized scenario against the real broker, PostgreSQL and devstripe: owners upgrade,
downgrade, withdraw, cancel and reactivate in quick succession (several requests a second),
members join and leave, Stripe's webhooks are duplicated, delayed and reordered, and the
gateway and the subscription service are restarted in the middle. After quiescence every
organisation's subscription equals what devstripe holds: plan and cycle (or the pending
change), status, cancellation at period end, and the seat quantity.

The run is random; its seed is printed (`SCENARIO_SEED=<seed>` repeats its choices; what the
services do concurrently still varies, as it does in production)."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from services.subscriptions.domain.catalogue import Catalogue
from shared.events.members import MemberRole
from shared.events.subscriptions import Cycle, Plan
from shared.topics import WORKSPACE_MEMBERS
from tests.stripe_truth.conftest import Stack

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

DISORDER = {"duplicate": 0.3, "max_delay": 1.0}
ORGANISATIONS = 6
STEPS = 200
CATALOGUE = Catalogue.load()


@dataclass
class Members:
    """The member directory's side: who is active, with each member's sequence."""

    sequence: Counter[str] = field(default_factory=Counter)
    active: set[str] = field(default_factory=set)


async def test_a_random_run_of_owners_members_disorder_and_restarts_converges_to_stripe(
    stack: Stack,
) -> None:
    seed = int(os.environ.get("SCENARIO_SEED", random.randrange(1 << 32)))
    print(f"SCENARIO_SEED={seed}")
    rng = random.Random(seed)
    stack.gateway_env["STRIPE_GATEWAY_QUANTITY_BURST"] = "200"
    await stack.restart_gateway()
    orgs = [await stack.organisation() for _ in range(ORGANISATIONS)]
    members = {org: Members(active={"member_owner"}) for org in orgs}
    for org in orgs:
        members[org].sequence["member_owner"] = 1
        await stack.pay(org, rng.choice(["pro", "max"]), rng.choice(["monthly", "annual"]))

    answers: Counter[int] = Counter()
    known: dict[str, dict] = {org: await stack.subscription(org) for org in orgs}
    restart_gateway_at, restart_subscriptions_at = STEPS // 3, 2 * STEPS // 3
    step = 0
    while step < STEPS:
        if restart_gateway_at <= step < restart_gateway_at + 3:
            await stack.restart_gateway()
            restart_gateway_at = -10
        if restart_subscriptions_at <= step < restart_subscriptions_at + 3:
            await stack.restart_subscriptions()
            restart_subscriptions_at = -10
        org = rng.choice(orgs)
        for _ in range(rng.randint(1, 3)):  # a burst on one organisation, back to back
            step += 1
            if rng.random() < 0.25:
                await membership(stack, org, members[org], rng)
                continue
            action, body = owner_action(known[org], rng)
            answer = await stack.owner(org, action, body)
            answers[answer.status_code] += 1
            assert answer.status_code in (200, 409, 422), answer.text  # a 5xx is a bug
            if answer.status_code == 200:
                found = answer.json()
                known[org] = found.get("subscription", found)
        await asyncio.sleep(rng.uniform(0, 0.2))

    await stack.quiet(timeout=120)
    mismatches = []
    for org in orgs:
        ours = await stack.subscription(org)
        theirs = await stack.in_stripe(org)
        seats = (await stack.seats.get(f"/v1/organisations/{org}/seats")).json()  # type: ignore[union-attr]
        found = compare(ours, theirs, seats["seats_used"], len(members[org].active))
        if found:
            mismatches.append((org, found))
    assert answers[200] > STEPS // 4, answers  # the run did change things
    assert mismatches == [], f"SCENARIO_SEED={seed}: {mismatches}"


def owner_action(sub: dict, rng: random.Random) -> tuple[str, dict | None]:
    """What an owner might do next, given what the last answer showed: mostly what applies
    (withdraw a pending downgrade, reactivate a cancellation, another plan), sometimes not."""
    if sub["pending_plan"] and rng.random() < 0.5:
        return "change", {"plan": sub["plan"], "cycle": sub["cycle"]}  # withdraw
    if sub["cancel_at_period_end"] and rng.random() < 0.6:
        return "reactivate", None
    if rng.random() < 0.2:
        return "cancel", None
    plan = rng.choice([p for p in ("pro", "max") if p != sub["plan"]] or ["pro"])
    return "change", {"plan": plan, "cycle": rng.choice(["monthly", "annual"])}


async def membership(stack: Stack, org: str, members: Members, rng: random.Random) -> None:
    """A member joins, or an active one (not the owner) leaves."""
    leaving = sorted(members.active - {"member_owner"})
    if leaving and rng.random() < 0.4:
        member, active = rng.choice(leaving), False
        members.active.discard(member)
    else:
        member, active = f"member_{rng.randrange(12)}", True
        members.active.add(member)
    members.sequence[member] += 1
    await stack.publish(
        WORKSPACE_MEMBERS,
        stack.member(org, member, MemberRole.MEMBER, members.sequence[member], active=active),
    )


def compare(ours: dict, theirs: dict | None, seats_used: int, active: int) -> dict:
    """What differs between our state and Stripe's; empty when they agree."""
    if theirs is None:
        return {"stripe": "no live subscription", "ours": ours["plan"]}
    differences = {}
    billed = CATALOGUE.plan_of_price(theirs["plan"]["id"])
    current = (Plan(ours["plan"]), Cycle(ours["cycle"]))
    pending = (
        (Plan(ours["pending_plan"]), Cycle(ours["pending_cycle"])) if ours["pending_plan"] else None
    )
    if billed != (pending or current):
        differences["price"] = (theirs["plan"]["id"], current, pending)
    if theirs["status"] not in ("active", "trialing") or ours["standing"] != "active":
        differences["status"] = (theirs["status"], ours["standing"])
    if theirs["cancel_at_period_end"] != ours["cancel_at_period_end"]:
        differences["cancel_at_period_end"] = (
            theirs["cancel_at_period_end"],
            ours["cancel_at_period_end"],
        )
    if not theirs["quantity"] == seats_used == active:
        differences["quantity"] = (theirs["quantity"], seats_used, active)
    return differences
