"""The one registry of topics: name, key, schemas, dead-letter topic, partitions, who writes
and who reads. Topics are created from it at start; consumers decode with it.

Every topic is keyed by organisation id, so one organisation's events stay in order on one
partition, and every topic has a dead-letter topic (`<name>.dlq`) for what its consumers refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.events import (
    AgentMessageProcessedV1,
    AgentMessageProcessedV2,
    CreditAuthorizationDecidedV1,
    CreditBalanceChangedV1,
    CreditGrantRequestedV1,
    CreditGrantRequestedV2,
    CreditsExhaustedV1,
    CreditsLowV1,
    Event,
)
from shared.events.audit import AuditRecordedV1, AuditRecordedV2
from shared.events.members import MEMBER_EVENTS, OrganisationCreatedV1
from shared.events.operations import DriftRepairedV1, OperatorAlertRaisedV1
from shared.events.seats import SeatsChangedV1
from shared.events.stripe import (
    CancelAtPeriodEndRequestedV1,
    ChargeRequestedV1,
    CheckoutRequestedV1,
    CreateCustomerRequestedV1,
    PortalRequestedV1,
    PriceChangeRequestedV1,
    QuantityChangeRequestedV1,
    StripeCheckoutCompletedV1,
    StripeCheckoutCompletedV2,
    StripeCommandFailedV1,
    StripeCommandSucceededV1,
    StripeInvoicePaidV1,
    StripeInvoicePaidV2,
    StripeInvoicePaymentFailedV1,
    StripeInvoicePaymentFailedV2,
    StripePaymentUpdatedV1,
    StripeSubscriptionActivatedV1,
    StripeSubscriptionActivatedV2,
    StripeSubscriptionDeletedV1,
    StripeSubscriptionDeletedV2,
    StripeSubscriptionRenewedV1,
    StripeSubscriptionRenewedV2,
    StripeSubscriptionUpdatedV1,
    StripeSubscriptionUpdatedV2,
)
from shared.events.subscriptions import SubscriptionChangedV1

KEY = "organisation_id"


EXTERNAL_PARTIES: dict[str, str] = {
    "agent runtime": "Another team's system: publishes a usage event for every agent message.",
    "chat gateway": "Another team's system: asks for authorization before a message goes out, "
    "and follows the credit bar.",
    "member directory": "Another team's system: the workspace's organisations and members.",
    "other teams' dashboards": "Other teams' dashboards, which consume the topics.",
    "operators' alerting": "The operators' alerting, which pages on alerts and shows repairs.",
}
"""Who else writes or reads the topics. Every other party named in the registry is one of
ours: a service (its `Service.name`) or `billing CLI`; the contract tests check what each of
ours declares against what its code publishes and consumes."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schemas: tuple[type[Event], ...]
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    partitions: int = 6
    key: str = KEY
    retired: tuple[type[Event], ...] = ()
    """Schemas still decoded (they may remain on the topic until its retention ends) that no
    producer writes any more: a newer version replaced them, or the command became an HTTP
    call. Never removed from `schemas` while a message of theirs can be read."""

    def __post_init__(self) -> None:
        assert set(self.retired) <= set(self.schemas), f"{self.name}: retired unknown schema"

    @property
    def published(self) -> tuple[type[Event], ...]:
        """The schemas written today."""
        return tuple(s for s in self.schemas if s not in self.retired)

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dlq"

    def topic(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def dead_letter_topic(self, prefix: str = "") -> str:
        return f"{prefix}{self.dead_letter}"


AGENT_USAGE = TopicSpec(
    name="agent.usage",
    schemas=(AgentMessageProcessedV1, AgentMessageProcessedV2),
    description="One event per agent message processed, with the credits it consumed (R6; "
    "version 2: the raw usage, which metering prices with the rate card).",
    producers=("agent runtime",),
    consumers=("metering",),
    partitions=6,
)
CREDIT_GRANT_REQUESTS = TopicSpec(
    name="credits.grant-requests",
    schemas=(CreditGrantRequestedV1, CreditGrantRequestedV2),
    description="Commands to grant, renew, top up, adjust or claw back an organisation's "
    "credits (version 2: as buckets with priority and expiry).",
    producers=("subscriptions",),
    consumers=("metering",),
    partitions=3,
)
CREDIT_BALANCE = TopicSpec(
    name="credits.balance",
    schemas=(CreditBalanceChangedV1,),
    description="An organisation's credits after every change: the data behind the credit bar.",
    producers=("metering",),
    consumers=("dashboard", "subscriptions", "chat gateway", "other teams' dashboards"),
    partitions=6,
)
CREDIT_ALERTS = TopicSpec(
    name="credits.alerts",
    schemas=(CreditsLowV1, CreditsExhaustedV1),
    description="Published once per crossing into `low` and into `exhausted`.",
    producers=("metering",),
    consumers=("other teams' dashboards",),
    partitions=3,
)

CREDIT_AUTHORIZATIONS = TopicSpec(
    name="credits.authorizations",
    schemas=(CreditAuthorizationDecidedV1,),
    description="Every authorization decision for the chat gateway, allowed or denied.",
    producers=("metering",),
    consumers=("dashboard",),
    partitions=6,
)

STRIPE_COMMANDS = TopicSpec(
    name="stripe.commands",
    schemas=(
        CreateCustomerRequestedV1,
        CheckoutRequestedV1,
        PortalRequestedV1,
        PriceChangeRequestedV1,
        CancelAtPeriodEndRequestedV1,
        QuantityChangeRequestedV1,
        ChargeRequestedV1,
    ),
    description="Commands to the Stripe gateway; the event id is the Stripe idempotency key.",
    producers=("subscriptions", "seats"),
    consumers=("stripe-gateway",),
    partitions=3,
    retired=(CreateCustomerRequestedV1, CheckoutRequestedV1, PortalRequestedV1),
)
_STRIPE_REPORTS_V1 = (
    StripeCheckoutCompletedV1,
    StripeSubscriptionActivatedV1,
    StripeSubscriptionRenewedV1,
    StripeSubscriptionUpdatedV1,
    StripeSubscriptionDeletedV1,
    StripeInvoicePaidV1,
    StripeInvoicePaymentFailedV1,
)
"""Stripe's reports ordered by its whole-second timestamps: replaced by version 2."""

STRIPE_EVENTS = TopicSpec(
    name="stripe.events",
    schemas=(
        *_STRIPE_REPORTS_V1,
        StripeCommandSucceededV1,
        StripeCommandFailedV1,
        StripeCheckoutCompletedV2,
        StripeSubscriptionActivatedV2,
        StripeSubscriptionRenewedV2,
        StripeSubscriptionUpdatedV2,
        StripeSubscriptionDeletedV2,
        StripeInvoicePaidV2,
        StripeInvoicePaymentFailedV2,
        StripePaymentUpdatedV1,
    ),
    description="What Stripe holds, fetched by the gateway when a webhook or the reconciler "
    "names an object (v2: ordered per object by `version`), and how each command ended.",
    producers=("stripe-gateway",),
    consumers=("subscriptions", "dashboard"),
    partitions=6,
    retired=_STRIPE_REPORTS_V1,
)

WORKSPACE_MEMBERS = TopicSpec(
    name="workspace.members",
    schemas=(OrganisationCreatedV1, *MEMBER_EVENTS),
    description="The member directory's organisations and members (another team's system): "
    "each member event carries the member's state and a per-member sequence.",
    producers=("member directory", "billing CLI"),
    consumers=("subscriptions", "seats", "metering", "dashboard"),
    partitions=6,
)
SUBSCRIPTION_STATE = TopicSpec(
    name="subscriptions.state",
    schemas=(SubscriptionChangedV1,),
    description="Every change of an organisation's subscription, with its whole state.",
    producers=("subscriptions",),
    consumers=("seats", "dashboard"),
    partitions=6,
)

SEATS_STATE = TopicSpec(
    name="seats.state",
    schemas=(SeatsChangedV1,),
    description="Every change of an organisation's seats: used, limit, over the limit, owners.",
    producers=("seats",),
    consumers=("dashboard",),
    partitions=6,
)

BILLING_OPERATIONS = TopicSpec(
    name="billing.operations",
    schemas=(DriftRepairedV1, OperatorAlertRaisedV1),
    description="For operators: every repair a reconciler made (before and after), and every "
    "alert (a parked report, a wallet that differs from its ledger, a Stripe mismatch).",
    producers=("stripe-gateway", "subscriptions", "metering"),
    consumers=("operators' alerting",),
    partitions=3,
)

BILLING_AUDIT = TopicSpec(
    name="billing.audit",
    schemas=(AuditRecordedV1, AuditRecordedV2),
    description="The audit log: every owner's and operator's action (plan changes, cancels, "
    "reactivations, the Billing Portal, Enterprise terms, grants, replays, reconciliations; "
    "version 2: budgets, credit packs, auto-recharge), who, when, the request id and the "
    "outcome.",
    producers=("subscriptions", "stripe-gateway", "metering", "billing CLI"),
    consumers=("dashboard",),
    partitions=3,
)

REGISTRY: tuple[TopicSpec, ...] = (
    AGENT_USAGE,
    CREDIT_GRANT_REQUESTS,
    CREDIT_BALANCE,
    CREDIT_ALERTS,
    CREDIT_AUTHORIZATIONS,
    STRIPE_COMMANDS,
    STRIPE_EVENTS,
    WORKSPACE_MEMBERS,
    SUBSCRIPTION_STATE,
    SEATS_STATE,
    BILLING_OPERATIONS,
    BILLING_AUDIT,
)

_BY_TYPE: dict[type[Event], TopicSpec] = {
    schema: spec for spec in REGISTRY for schema in spec.schemas
}


def spec_for(event_type: type[Event]) -> TopicSpec:
    """The topic an event type is published on; each type lives on exactly one topic."""
    return _BY_TYPE[event_type]


@dataclass(frozen=True)
class TopicLayout:
    """How topics are created: partitions per topic (the registry's unless overridden),
    replication and `min.insync.replicas` (settings `KAFKA_*`)."""

    replication_factor: int = 1
    min_insync_replicas: int | None = None
    partitions: Mapping[str, int] = field(default_factory=dict)
    """Overrides by registry name (`agent.usage`), e.g. to scale a topic out."""

    def topics(self, specs: Iterable[TopicSpec], prefix: str = "") -> list[NewTopic]:
        """Every topic and its dead-letter topic (one partition: it is read by people)."""
        configs = (
            {"min.insync.replicas": str(self.min_insync_replicas)}
            if self.min_insync_replicas
            else {}
        )
        return [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=self.replication_factor,
                topic_configs=configs,
            )
            for spec in specs
            for name, partitions in (
                (spec.topic(prefix), self.partitions.get(spec.name, spec.partitions)),
                (spec.dead_letter_topic(prefix), 1),
            )
        ]


async def ensure_topics(
    bootstrap_servers: str,
    prefix: str = "",
    specs: Iterable[TopicSpec] = REGISTRY,
    layout: TopicLayout = TopicLayout(),
) -> list[str]:
    """Create every topic and its dead-letter topic that does not exist yet. Returns the names."""
    wanted = layout.topics(specs, prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="topic-registry")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return [topic.name for topic in wanted]
