"""Who may call what: each kind of caller holds its own credentials, each credential one scope,
and each route names the scopes it admits.

Credentials are configured per service in `<PREFIX>API_TOKENS` as `scope:token` pairs,
comma-separated; several per scope for rotation. A presented token is compared in constant time
with every configured one (never short-circuited, never logged). An unknown token is answered
401, a known one outside the route's scopes 403, both as problem+json.

The development token (`dev-token`, `make run` and the tests) stands in for every caller and is
refused unless the service listens on loopback only."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.problems import Problem

DEV_API_TOKEN = "dev-token"
"""The bearer token `make run` and the `billing` command use. Accepted only on loopback."""


class Scope(StrEnum):
    """The kinds of caller."""

    CHAT = "chat"
    """The chat gateway: authorizes a message's credits, releases what it did not use."""
    FRONT = "front"
    """The web app's front proxy: the acting member's routes, with a signed identity."""
    READER = "reader"
    """Dashboards and readers: balances, ledgers, seats, subscriptions; nothing that changes."""
    OPERATOR = "operator"
    """Operators: Enterprise terms, grants, replays, reconciliation, ledger checks, the clock."""
    SERVICE = "service"
    """This system's services calling each other (subscriptions opening Stripe sessions)."""


EVERY_SCOPE = frozenset(Scope)
READERS = frozenset({Scope.READER, Scope.OPERATOR})


@dataclass(frozen=True)
class Credential:
    scopes: frozenset[Scope]
    token: bytes


def parse_credentials(text: str) -> tuple[Credential, ...]:
    """`scope:token,…` into credentials; raises ValueError naming what is wrong (never the
    token). The development token alone may come without a scope: it holds every scope."""
    found: list[Credential] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entry == DEV_API_TOKEN:
            found.append(Credential(EVERY_SCOPE, entry.encode()))
            continue
        scope, sep, token = entry.partition(":")
        if not sep or scope not in Scope.__members__.values():
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"each token is `scope:token`, with a scope among {known}")
        if len(token) < 16:
            raise ValueError(f"a {scope} token has fewer than 16 characters")
        found.append(Credential(frozenset({Scope(scope)}), token.encode()))
    if not found:
        raise ValueError("give at least one `scope:token`")
    return tuple(found)


def scopes_of(credentials: tuple[Credential, ...], presented: str) -> frozenset[Scope]:
    """The scopes a presented token holds (empty: unknown), compared with every credential."""
    given = presented.encode()
    held: frozenset[Scope] = frozenset()
    for credential in credentials:
        if hmac.compare_digest(given, credential.token):
            held = held | credential.scopes
    return held


_bearer = HTTPBearer(auto_error=False, description="The token of an internal caller")


def allow(*scopes: Scope) -> Any:
    """A route dependency admitting callers that hold one of `scopes`."""
    admitted = frozenset(scopes)

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> frozenset[Scope]:
        settings = request.app.state.settings
        held = scopes_of(settings.credentials, credentials.credentials) if credentials else None
        if not held:
            prefix = settings.model_config.get("env_prefix", "")
            raise Problem(
                401,
                "unauthorized",
                "Missing or invalid bearer token",
                f"Send `Authorization: Bearer <token>` with a token configured in "
                f"{prefix}API_TOKENS.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not held & admitted:
            raise Problem(
                403,
                "outside-scope",
                "This credential may not call this route",
                f"It is for {', '.join(sorted(held))}; this route admits "
                f"{', '.join(sorted(admitted))}.",
            )
        request.state.credential = hashlib.sha256(credentials.credentials.encode()).hexdigest()[:8]
        return held

    check.admitted = admitted  # type: ignore[attr-defined]
    return Depends(check)
