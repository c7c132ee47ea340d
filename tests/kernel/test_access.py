"""Scoped credentials on every route of every service, and the signed identity of the acting
member (`shared.access`, `shared.identity`)."""

from __future__ import annotations

import base64
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from shared import clock_control, identity
from shared.access import Scope
from shared.identity import DEV_IDENTITY_KEYS, IdentityRefused, parse_keys, verify
from shared.service import Service, create_app, registered
from shared.testing.bounds import unbounded

SERVICES: list[Service] = registered()
OPEN = {"/healthz", "/readyz", "/stripe/webhook"}
"""Routes without a bearer credential: probes, and Stripe's webhooks (signed by Stripe)."""
PAGE = "dashboard"
"""The Billing page: browsers behind the front proxy, proven by the signed identity alone."""
VALUES = {
    "organisation_id": "org_scoped",
    "authorization_id": "az_1",
    "event_id": "evt_1",
    "message_id": "msg_1",
    "member_id": "member_1",
    "agent_id": "agent_1",
}


def token(scope: Scope) -> str:
    return f"{scope.value}-credential-0001"


def scoped_app(service: Service) -> Any:
    tokens = ",".join(f"{s.value}:{token(s)}" for s in Scope)
    with mock.patch.dict(os.environ, {f"{service.env_prefix}API_TOKENS": tokens}):
        return create_app(service, service.settings())


def guarded_routes(service: Service) -> list[tuple[APIRoute, frozenset[Scope]]]:
    found = []
    for route in (r for router in (*service.routers, clock_control.router) for r in router.routes):
        if not isinstance(route, APIRoute) or route.path in OPEN:
            continue
        admitted = [getattr(d.call, "admitted", None) for d in route.dependant.dependencies]
        found.append((route, next((a for a in admitted if a is not None), frozenset())))
    return found


CHAT, FRONT, OPERATOR, SERVICE = Scope.CHAT, Scope.FRONT, Scope.OPERATOR, Scope.SERVICE
READ = {Scope.READER, Scope.OPERATOR}
ORG = "/v1/organisations/{organisation_id}"
POLICY: dict[tuple[str, str, str], set[Scope]] = {
    ("metering", "POST", "/v1/authorizations"): {CHAT},
    ("metering", "GET", "/v1/authorizations/{authorization_id}"): {CHAT, OPERATOR},
    ("metering", "POST", "/v1/authorizations/{authorization_id}/release"): {CHAT},
    ("metering", "GET", f"{ORG}/credits"): READ,
    ("metering", "GET", f"{ORG}/ledger"): READ,
    ("metering", "GET", f"{ORG}/usage"): READ,
    ("metering", "POST", "/v1/ledger-checks"): {OPERATOR},
    ("metering", "GET", "/v1/rate-card"): {FRONT, *READ},
    ("metering", "GET", "/v1/budgets"): {FRONT},
    ("metering", "PUT", "/v1/budgets/members/{member_id}"): {FRONT},
    ("metering", "PUT", "/v1/budgets/agents/{agent_id}"): {FRONT},
    ("metering", "PUT", "/v1/budgets/member-default"): {FRONT},
    ("metering", "GET", f"{ORG}/budgets"): READ,
    ("metering", "GET", f"{ORG}/messages/{{message_id}}/receipt"): READ,
    ("metering", "GET", f"{ORG}/usage/breakdown"): READ,
    ("seats", "GET", f"{ORG}/seat-check"): {FRONT, *READ},
    ("seats", "GET", f"{ORG}/seats"): READ,
    ("stripe-gateway", "POST", "/v1/checkout-sessions"): {SERVICE},
    ("stripe-gateway", "POST", "/v1/portal-sessions"): {SERVICE},
    ("stripe-gateway", "POST", "/v1/payment-checkout-sessions"): {SERVICE},
    ("stripe-gateway", "GET", f"{ORG}/subscriptions"): {SERVICE, *READ},
    ("stripe-gateway", "GET", "/v1/subscriptions"): {SERVICE, *READ},
    ("stripe-gateway", "GET", f"{ORG}/invoices"): {SERVICE, *READ},
    ("stripe-gateway", "GET", "/v1/inbox"): {OPERATOR},
    ("stripe-gateway", "POST", "/v1/inbox/{event_id}/replay"): {OPERATOR},
    ("stripe-gateway", "POST", "/v1/reconciliations"): {OPERATOR},
    ("stripe-gateway", "GET", "/v1/reconciliations"): {OPERATOR},
    ("subscriptions", "GET", "/v1/subscription"): {FRONT},
    ("subscriptions", "POST", "/v1/subscription/change"): {FRONT},
    ("subscriptions", "POST", "/v1/subscription/cancel"): {FRONT},
    ("subscriptions", "POST", "/v1/subscription/reactivate"): {FRONT},
    ("subscriptions", "POST", "/v1/billing-portal"): {FRONT},
    ("subscriptions", "POST", "/v1/subscription/credit-packs"): {FRONT},
    ("subscriptions", "GET", "/v1/subscription/credit-purchases"): {FRONT},
    ("subscriptions", "GET", "/v1/subscription/auto-recharge"): {FRONT},
    ("subscriptions", "PUT", "/v1/subscription/auto-recharge"): {FRONT},
    ("subscriptions", "GET", "/v1/catalogue"): {FRONT, *READ},
    ("subscriptions", "GET", f"{ORG}/subscription"): READ,
    ("subscriptions", "PUT", f"{ORG}/enterprise"): {OPERATOR},
    ("subscriptions", "POST", "/v1/reconciliations"): {OPERATOR},
}
"""Who may call what: the table a reviewer reads. Every service's clock also answers
`GET /v1/clock` to any credential and `POST /v1/clock` to operators."""
CLOCK = {
    ("GET", "/v1/clock"): set(Scope),
    ("POST", "/v1/clock"): {Scope.OPERATOR},
}


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_route_admits_exactly_the_scopes_of_the_policy(service: Service) -> None:
    declared = {
        (sorted(route.methods)[0], route.path): set(admitted)
        for route, admitted in guarded_routes(service)
    }
    expected = {
        **{(m, p): set(s) for (name, m, p), s in POLICY.items() if name == service.name},
        **({} if service.name == PAGE else CLOCK),
    }
    if service.name == PAGE:
        declared = {k: v for k, v in declared.items() if k not in CLOCK}
        assert all(not v for v in declared.values()), "the page is proven by identity alone"
        return
    assert declared == expected


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
async def test_each_credential_is_refused_outside_its_scope(service: Service) -> None:
    """Unknown token: 401; a known one outside the route's scopes: 403; inside: past the check
    (whatever the route then answers). Through the hot routes too, which fall back to the
    framework's answer."""
    app = scoped_app(service)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    checked = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        for route, admitted in guarded_routes(service):
            if service.name == PAGE:
                continue
            path = re.sub(r"{(\w+)}", lambda m: VALUES[m.group(1)], route.path)
            for method in route.methods:
                for presented, expected in (
                    (None, 401),
                    ("not-a-credential-at-all", 401),
                    *((token(s), 403 if s not in admitted else None) for s in Scope),
                ):
                    headers = {"Authorization": f"Bearer {presented}"} if presented else {}
                    answer = await client.request(method, path, headers=headers, json={})
                    what = (method, path, presented, answer.status_code, answer.text[:200])
                    if expected is None:
                        assert not answer.text.count("outside-scope"), what
                        assert answer.status_code != 401 or "unauthorized" not in answer.text, what
                    else:
                        assert answer.status_code == expected, what
                        assert answer.headers["content-type"] == "application/problem+json"
                    checked += 1
    assert checked or service.name == PAGE


NOW = datetime(2027, 1, 31, 9, tzinfo=UTC)
KEYS = parse_keys(DEV_IDENTITY_KEYS)


def test_a_signed_identity_is_proven_until_it_expires_on_the_services_clock() -> None:
    token = identity.sign("org_a", "member_ada", NOW)
    proven = verify(token, KEYS, NOW + timedelta(minutes=4))
    assert (proven.organisation_id, proven.member_id) == ("org_a", "member_ada")
    with pytest.raises(IdentityRefused, match="expired"):
        verify(token, KEYS, NOW + identity.LIFETIME)
    with pytest.raises(IdentityRefused, match="future"):
        verify(token, KEYS, NOW - timedelta(minutes=1))


def test_forged_tampered_and_unsigned_identities_are_refused() -> None:
    forged = identity.sign("org_a", "member_ada", NOW, key=Ed25519PrivateKey.generate())
    header, _, signature = identity.sign("org_a", "member_bob", NOW).split(".")
    other_claims = identity.sign("org_a", "member_ada", NOW).split(".")[1]
    unsigned = jwt.encode(
        {"aud": "billing", "org": "org_a", "sub": "member_ada", "iat": 1, "exp": 1 << 35},
        None,
        algorithm="none",
        headers={"kid": "dev"},
    )
    symmetric = jwt.encode(
        {"aud": "billing", "org": "org_a", "sub": "member_ada", "iat": 1, "exp": 1 << 35},
        base64.urlsafe_b64decode(identity.DEV_PUBLIC_KEY + "="),
        algorithm="HS256",
        headers={"kid": "dev"},
    )
    for token in (forged, f"{header}.{other_claims}.{signature}", unsigned, symmetric):
        with pytest.raises(IdentityRefused):
            verify(token, KEYS, NOW)
    wrong_audience = jwt.encode(
        {"aud": "elsewhere", "org": "org_a", "sub": "m", "iat": 1, "exp": 1 << 35},
        identity._DEV_PRIVATE,
        algorithm="EdDSA",
        headers={"kid": "dev"},
    )
    with pytest.raises(IdentityRefused):
        verify(wrong_audience, KEYS, NOW)


@given(token=st.text(max_size=3000), org=st.text(max_size=100), member=st.text(max_size=200))
def test_any_presented_identity_is_proven_or_refused_never_an_error(
    token: str, org: str, member: str
) -> None:
    for presented in (token, identity.sign(org, member, NOW)):
        try:
            proven = verify(presented, KEYS, NOW)
        except IdentityRefused:
            continue
        assert proven.organisation_id == org and proven.member_id == member
        assert re.fullmatch(r"org_[A-Za-z0-9_-]{1,64}", org)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_request_parameter_and_body_is_bounded(service: Service) -> None:
    """What each route accepts (path, query, header parameters and bodies) fits the stores:
    integers within 64 bits, strings and lists with a maximum length."""
    spec = create_app(service, service.settings()).openapi()
    defs = spec.get("components", {}).get("schemas", {})
    found = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", ()):
                found += unbounded(parameter["schema"], defs, f"{where} {parameter['name']}")
            for media in operation.get("requestBody", {}).get("content", {}).values():
                found += unbounded(media.get("schema", {}), defs, f"{where} body")
    assert found == []
