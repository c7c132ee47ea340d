"""Decoding a topic's records into typed events, or into a `Rejection` with a reason.

The reasons are machine-readable and stable; they travel with a parked message in the
dead-letter topic's `dlq.reason` header:

  payload_too_large, malformed_json, missing_event_type, unknown_event_type,
  unsupported_event_version, invalid_organisation_id, invalid_amount, invalid_event,
  key_mismatch

A record's verdict depends on its own bytes and key only: a batch is decoded record by record,
so a record gets the same verdict alone and in any batch (nothing is joined or defaulted across
records). Each record first tries the fast path, one validation of its bytes against the
topic's schemas; only a record that fails it is parsed again to find the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, Union

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from .envelope import Event, type_base

_AMOUNT_FIELDS = {"credits", "amount", "input_tokens", "output_tokens", "tool_calls"}
_DETAIL_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


class RecordLike(Protocol):
    key: bytes | None
    value: bytes | None


def _union(schemas: Sequence[type[Event]]) -> Any:
    if len(schemas) == 1:
        return schemas[0]
    return Annotated[Union[tuple(schemas)], Field(discriminator="type")]  # noqa: UP007


class TopicCodec:
    """Validates records against the schemas a topic admits, checking that the record key is
    the event's organisation."""

    def __init__(self, schemas: Sequence[type[Event]], *, max_bytes: int) -> None:
        self._schemas = {schema.type_name: schema for schema in schemas}
        self._bases = {type_base(name) for name in self._schemas}
        self._adapters = {name: TypeAdapter(schema) for name, schema in self._schemas.items()}
        self._any = TypeAdapter(_union(schemas))
        self.max_bytes = max_bytes

    def decode(self, value: bytes | None, key: bytes | None) -> Event | Rejection:
        if not value:
            return Rejection("malformed_json", "empty payload")
        if len(value) > self.max_bytes:
            return Rejection("payload_too_large", f"{len(value)} bytes > limit of {self.max_bytes}")
        try:
            event = self._any.validate_json(value)
        except ValidationError:
            return self.diagnose(value)
        return _check_key(event, key)

    def decode_batch(self, records: Sequence[RecordLike]) -> list[Event | Rejection]:
        decode = self.decode
        return [decode(r.value, r.key) for r in records]

    def diagnose(self, value: bytes) -> Rejection:
        """Why `value` (non-empty, within the size limit) is not a valid event of this topic."""
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejection("malformed_json", str(exc)[:_DETAIL_LIMIT])
        if not isinstance(raw, dict):
            return Rejection("malformed_json", "payload is not a JSON object")
        type_name = raw.get("type")
        if not isinstance(type_name, str) or not type_name:
            return Rejection("missing_event_type", "no string `type` field")
        if type_name not in self._schemas:
            if type_base(type_name) in self._bases:
                accepted = ", ".join(sorted(self._schemas))
                return Rejection(
                    "unsupported_event_version", f"{type_name!r} is not accepted here ({accepted})"
                )
            return Rejection("unknown_event_type", f"{type_name!r}"[:_DETAIL_LIMIT])
        try:
            self._adapters[type_name].validate_json(value)
        except ValidationError as exc:
            return _classify(exc)
        # The JSON parsers disagree (the fast path refused what this one accepts): refuse, so
        # that the verdict stays the fast path's.
        return Rejection("malformed_json", "not parseable as a single JSON document")


def _check_key(event: Event, key: bytes | None) -> Event | Rejection:
    if key is None:
        return Rejection("key_mismatch", "record has no key; the key must be the organisation id")
    if key != event.key:
        return Rejection(
            "key_mismatch",
            f"record key {key[:80]!r} is not the organisation id {event.organisation_id!r}",
        )
    return event


def _classify(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    detail = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or '<root>'}: {e['msg']}" for e in errors
    )[:_DETAIL_LIMIT]
    if any(e["type"] == "json_invalid" for e in errors):
        return Rejection("malformed_json", detail)
    locations = [e["loc"] for e in errors]
    if any(loc[:1] == ("organisation_id",) for loc in locations):
        return Rejection("invalid_organisation_id", detail)
    if any(loc and loc[-1] in _AMOUNT_FIELDS for loc in locations):
        return Rejection("invalid_amount", detail)
    return Rejection("invalid_event", detail)
