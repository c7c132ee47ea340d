"""The audit log: owners' and operators' actions, each recorded append-only with who, what,
when, the request id and the outcome, announced on `billing.audit` and listed by
`billing audit`."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from shared import cli
from shared.events import CreditGrantRequested, CreditGrantRequestedV1, GrantReason
from shared.events.audit import AUDITED, SYSTEM_ORGANISATION, AuditRecordedV1, AuditRecordedV2
from shared.testing import eventually, read_topic
from shared.topics import BILLING_AUDIT, CREDIT_GRANT_REQUESTS
from tests.subscriptions.conftest import MEMBER, OWNER, Billing
from tests.subscriptions.test_lifecycle import checkout_through_stripe

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPERATOR = {"X-Operator": "alice", "X-Request-Id": "req_operator_0001"}


def organisation() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


async def entries(
    billing: Billing, org: str, count: int
) -> list[AuditRecordedV1 | AuditRecordedV2]:
    """The organisation's announced entries, once there are `count` of them."""
    found: list[AuditRecordedV1 | AuditRecordedV2] = []

    async def enough() -> bool:
        records = await read_topic(billing.bootstrap, billing.topic(BILLING_AUDIT))
        found[:] = [
            e for e in (AUDITED.validate_json(r.value) for r in records) if e.organisation_id == org
        ]
        return len(found) >= count

    await eventually(enough, what=f"{count} audit entries of {org}")
    return sorted(found, key=lambda e: e.occurred_at)


async def test_owners_actions_and_refusals_are_recorded_with_their_actor(
    billing: Billing,
) -> None:
    org = organisation()
    await billing.organisation(org)
    await checkout_through_stripe(billing, org, "pro")
    refused = await billing.http.post(
        "/v1/subscription/cancel", headers=billing.acting(org, MEMBER)
    )
    assert refused.status_code == 403
    for action in ("cancel", "reactivate"):
        answer = await billing.http.post(
            f"/v1/subscription/{action}",
            headers={**billing.acting(org), "X-Request-Id": f"req_{action}_1"},
        )
        assert answer.status_code == 200, answer.text
    upgrade = await billing.http.post(
        "/v1/subscription/change", json={"plan": "max"}, headers=billing.acting(org)
    )
    assert upgrade.status_code == 200, upgrade.text
    recharge = {"enabled": True, "threshold": 100, "pack": "pack_5k", "monthly_cap": 20_000}
    saved = await billing.http.put(
        "/v1/subscription/auto-recharge", json=recharge, headers=billing.acting(org)
    )
    assert saved.status_code == 200, saved.text
    bought = await billing.http.post(
        "/v1/subscription/credit-packs",
        json={"pack": "pack_5k"},
        headers=billing.acting(org, MEMBER),
    )
    assert bought.status_code == 403

    found = await entries(billing, org, 7)
    seen = [(e.data.actor, e.data.action, e.data.outcome, e.data.target) for e in found]
    assert seen == [
        (OWNER, "plan_change", "succeeded", "pro:monthly"),
        (MEMBER, "cancel", "refused", None),
        (OWNER, "cancel", "succeeded", None),
        (OWNER, "reactivate", "succeeded", None),
        (OWNER, "plan_change", "succeeded", "max"),
        (OWNER, "auto_recharge", "succeeded", "pack_5k"),
        (MEMBER, "credit_pack", "refused", "pack_5k"),
    ]
    # Actions version 1 names are still announced as version 1; the new ones as version 2.
    assert [e.type[-2:] for e in found] == ["v1"] * 5 + ["v2"] * 2
    assert found[0].data.detail == "checkout"
    assert found[1].data.detail == "not_owner"
    assert [e.data.request_id for e in found[2:4]] == ["req_cancel_1", "req_reactivate_1"]
    assert all(e.producer == "subscriptions" and e.data.actor_kind == "member" for e in found)


async def test_operators_actions_are_recorded_with_their_credential_and_name(
    billing: Billing, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = organisation()
    await billing.organisation(org)
    terms = await billing.http.put(
        f"/v1/organisations/{org}/enterprise",
        json={"monthly_credits": 50_000, "seat_limit": 40},
        headers=OPERATOR,
    )
    assert terms.status_code == 200, terms.text
    checked = await billing.metering.post(
        "/v1/ledger-checks", json={"organisation_id": org}, headers=OPERATOR
    )
    assert checked.status_code == 200, checked.text
    await billing.publish(
        CREDIT_GRANT_REQUESTS,
        CreditGrantRequestedV1.new(
            organisation_id=org,
            producer="billing-cli",
            occurred_at=billing.clock.now(),
            data=CreditGrantRequested(
                period_key="goodwill-2026-12",
                amount=500,
                reason=GrantReason.MANUAL_ADJUSTMENT,
                note="outage credit",
            ),
        ),
    )

    found = await entries(billing, org, 3)
    by_action = {e.data.action.value: e for e in found}
    fingerprint = by_action["enterprise_terms"].data.actor.split(":")[1]
    assert len(fingerprint) == 8 and "dev-token" not in by_action["enterprise_terms"].data.actor
    assert by_action["enterprise_terms"].data.actor == f"operator:{fingerprint}:alice"
    assert by_action["enterprise_terms"].data.request_id == "req_operator_0001"
    assert "50000 credits a month, 40 seats" in by_action["enterprise_terms"].data.detail
    assert by_action["ledger_check"].producer == "metering"
    assert by_action["ledger_check"].data.detail == "0 mismatches"
    grant = by_action["credit_grant"].data
    assert (grant.actor, grant.target) == ("operator:billing-cli", "goodwill-2026-12")
    assert grant.detail == "500 credits: outage credit"

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", billing.bootstrap)
    monkeypatch.setenv("TOPIC_PREFIX", billing.settings.topic_prefix)
    listed = await asyncio.to_thread(_billing_audit, ["audit", "--organisation", org])
    lines = [line for line in listed.splitlines() if org in line]
    assert len(lines) == 3
    assert any(
        f"operator:{fingerprint}:alice" in line and "enterprise_terms" in line for line in lines
    )


def _billing_audit(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


async def test_a_reconciliation_over_everyone_is_recorded_for_the_system(
    billing: Billing,
) -> None:
    answer = await billing.http.post("/v1/reconciliations", json={}, headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    found = await entries(billing, SYSTEM_ORGANISATION, 1)
    assert found[-1].data.action == "reconciliation"
    assert found[-1].data.detail.endswith("repaired")


async def test_the_audit_log_is_append_only(billing: Billing) -> None:
    org = organisation()
    await billing.organisation(org)
    await billing.http.post("/v1/subscription/cancel", headers=billing.acting(org))
    await entries(billing, org, 1)
    pool: asyncpg.Pool = billing.kernel.pool
    for statement in ("UPDATE audit_log SET outcome = 'succeeded'", "DELETE FROM audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute(statement)
    assert (
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE organisation_id = $1", org) == 1
    )
