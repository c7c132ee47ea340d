"""The acting member, proven: the front proxy signs a short-lived identity (organisation, member,
expiry) as a JWT with Ed25519 (`EdDSA`); services hold only the public keys, so none of them can
sign one. The expiry is checked against the service's clock, not the wall clock.

Keys are configured as `key-id:public-key` pairs (the raw 32-byte Ed25519 key, base64url),
comma-separated, several for rotation; a token names its key in its `kid` header. The
development key (`make run`, the tests) is derived from a public phrase: a service accepts it
only on loopback, and its private half signs identities for the development stand-ins (the
dashboard's query parameters, `billing identity`)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events.envelope import Identifier, OrganisationId

AUDIENCE = "billing"
ALGORITHM = "EdDSA"
IDENTITY_HEADER = "X-Member-Identity"
LIFETIME = timedelta(minutes=5)
"""How long an identity the development stand-in signs stays valid."""
LEEWAY = timedelta(seconds=30)
"""Clock difference tolerated between the signer and a service (issued-at in the future)."""
MAX_TOKEN_CHARS = 2048

DEV_KEY_ID = "dev"
_DEV_PRIVATE = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"billing development identity key: never in production").digest()
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


DEV_PUBLIC_KEY = _b64(_DEV_PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
DEV_IDENTITY_KEYS = f"{DEV_KEY_ID}:{DEV_PUBLIC_KEY}"


@dataclass(frozen=True)
class Identity:
    organisation_id: str
    member_id: str
    expires_at: datetime


class IdentityRefused(Exception):
    """Why a presented identity is not accepted (safe to show: it names no key)."""


def parse_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """`kid:key,…` into public keys; raises ValueError naming what is wrong."""
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        kid, sep, encoded = entry.partition(":")
        if not sep or not kid:
            raise ValueError("each identity key is `key-id:base64url-public-key`")
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ValueError(f"identity key {kid!r} is not a 32-byte Ed25519 public key") from None
    if not keys:
        raise ValueError("give at least one identity key")
    return keys


def uses_development_key(text: str) -> bool:
    """Whether `kid:key,…` holds the development key, under whatever key id."""
    dev = _DEV_PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return any(
        key.public_bytes(Encoding.Raw, PublicFormat.Raw) == dev for key in parse_keys(text).values()
    )


def sign(
    organisation_id: str,
    member_id: str,
    now: datetime,
    *,
    key: Ed25519PrivateKey = _DEV_PRIVATE,
    key_id: str = DEV_KEY_ID,
    lifetime: timedelta = LIFETIME,
) -> str:
    """An identity for `member_id` in `organisation_id`, valid from `now` for `lifetime`
    (the front proxy's part; by default with the development key)."""
    claims = {
        "aud": AUDIENCE,
        "org": organisation_id,
        "sub": member_id,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id})


def verify(token: str, keys: dict[str, Ed25519PublicKey], now: datetime) -> Identity:
    """The identity a token proves at `now`, or IdentityRefused."""
    if len(token) > MAX_TOKEN_CHARS:
        raise IdentityRefused("the identity is too long")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise IdentityRefused("the identity is not a signed token") from None
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise IdentityRefused("the identity is signed with an unknown key")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError:
        raise IdentityRefused("the identity's signature or claims are invalid") from None
    try:
        found = _Claims.model_validate(claims)
    except ValidationError:
        raise IdentityRefused("the identity names no valid organisation, member or times") from None
    stamp = now.timestamp()
    if found.exp <= stamp:
        raise IdentityRefused("the identity has expired")
    if found.iat > stamp + LEEWAY.total_seconds():
        raise IdentityRefused("the identity is issued in the future")
    return Identity(found.org, found.sub, datetime.fromtimestamp(found.exp, now.tzinfo))


class _Claims(BaseModel):
    model_config = ConfigDict(strict=True)

    org: OrganisationId
    sub: Identifier
    iat: int = Field(ge=0, lt=1 << 40)
    exp: int = Field(ge=0, lt=1 << 40)
