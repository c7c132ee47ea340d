"""The envelope every event carries, and the rules every event type follows.

An event is a frozen pydantic model: `event_id`, `type`, `organisation_id`, `occurred_at`,
`producer`, and a typed `data` body. The `type` names the schema and its version
(`agent_message.processed.v1`); it is required on the wire. A published schema is never changed
in place, a changed one is a new class with a new version. Unknown fields are refused, so a
change cannot slip in silently.

What the database would refuse is refused here, at the edge, so that a record is either valid
or rejected with a reason and never fails later in a transaction:
- identifiers and text carry no control characters (PostgreSQL refuses NUL in text; the other
  C0/C1 controls and DEL have no business in ids and break logs);
- instants lie in the window [`EARLIEST`, `LATEST`): 2000-01-01 to 2100-01-01 UTC. Outside it a
  timestamp is a producer's bug (and at the calendar's edges, with an offset, not even
  representable in UTC);
- numbers are bounded by each schema (credits, amounts), far inside PostgreSQL's `bigint`.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self
from uuid import UUID, uuid4

import orjson
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    UrlConstraints,
)

ORGANISATION_ID_PATTERN = r"^org_[A-Za-z0-9_-]{1,64}$"

OrganisationId = Annotated[str, StringConstraints(max_length=68, pattern=ORGANISATION_ID_PATTERN)]
"""`org_` and 1–64 letters, digits, `_` or `-`. It is also the Kafka key of every topic."""

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*$"

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
]
"""1–128 characters, none of them a control character."""


INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=-INT64_MAX, le=INT64_MAX)]
"""What a `bigint` column holds."""
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
INT32_MAX = 2**31 - 1
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
"""A count stored in an `int` column (seats, quantities)."""
HttpUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)]

TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Free text: tabs and line breaks allowed, no other control characters."""


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _in_window(value: datetime) -> datetime:
    if EARLIEST.year < value.year < LATEST.year - 1:
        return value  # an offset moves an instant by less than a day: inside, whatever it is
    if not EARLIEST <= value < LATEST:
        raise ValueError(
            f"instant outside the accepted window [{EARLIEST.isoformat()}, {LATEST.isoformat()})"
        )
    return value


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_window)]
"""A timezone-aware instant within [2000-01-01, 2100-01-01) UTC; naive datetimes are refused.
Producers send UTC (`Z`); what the services store and publish is UTC (`timestamptz`, the
injected clock)."""


class Body(BaseModel):
    """Base of every event's `data`."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(BaseModel):
    """Base of every event. Subclasses fix `type` with a `Literal` and `data` with a `Body`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID
    type: str
    organisation_id: OrganisationId
    occurred_at: UtcDatetime
    producer: Identifier
    data: Body

    type_name: ClassVar[str]
    """The versioned type of a concrete event class, taken from its `type` literal."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        annotation = cls.model_fields["type"].annotation
        if typing.get_origin(annotation) is typing.Literal:
            (cls.type_name,) = typing.get_args(annotation)

    @classmethod
    def new(
        cls,
        *,
        organisation_id: str,
        data: Body,
        producer: str,
        occurred_at: datetime,
        event_id: UUID | None = None,
    ) -> Self:
        return cls(
            event_id=event_id or uuid4(),
            type=cls.type_name,
            organisation_id=organisation_id,
            occurred_at=occurred_at,
            producer=producer,
            data=data,
        )

    @property
    def key(self) -> bytes:
        """The Kafka key: the organisation, so one organisation's events stay in order."""
        return self.organisation_id.encode()

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


def type_base(type_name: str) -> str:
    """`agent_message.processed.v1` -> `agent_message.processed`."""
    head, _, version = type_name.rpartition(".")
    return head if version.startswith("v") and version[1:].isdigit() else type_name
