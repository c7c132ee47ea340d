"""Prometheus metrics, one piece for every service: `GET /metrics` on each service's HTTP port
(no token, like `/healthz`: expose it to the scraper's network only).

The series are defined once per process and labelled by consumer, topic or service, so that
several services in one process (the tests) share them without clashing."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

RECORDS = Counter(
    "billing_records_total",
    "Records a consumer took from its topic, by outcome: applied or parked.",
    ["consumer", "topic", "outcome"],
)
PARKED = Counter(
    "billing_records_parked_total",
    "Records parked on the dead-letter topic, by reason.",
    ["consumer", "topic", "reason"],
)
FAILED_BATCHES = Counter(
    "billing_batches_failed_total",
    "Batches that failed to apply (rewound and retried; the partition stalls meanwhile).",
    ["consumer", "topic"],
)
BATCH_SECONDS = Histogram(
    "billing_batch_seconds",
    "Time to apply and park one batch.",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    "billing_consumer_lag",
    "Records between a partition's last applied offset and its end, after each batch.",
    ["consumer", "topic", "partition"],
)
OUTBOX_PUBLISHED = Counter(
    "billing_outbox_published_total",
    "Announcements published from the outbox, by event type (`drift.repaired.v1`: the "
    "reconcilers' repairs; `operator_alert.raised.v1`: what needs an operator).",
    ["schema", "event_type"],
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "billing_outbox_oldest_seconds",
    "Age of the oldest announcement waiting in the outbox at the last drain (0: empty).",
    ["schema"],
)
OUTBOX_BACKLOG = Gauge(
    "billing_outbox_backlog",
    "Announcements left waiting in the outbox after the last drain (counted when a drain "
    "took a full batch; 0 otherwise).",
    ["schema"],
)
AUTHORIZATIONS = Counter(
    "billing_authorizations_total",
    "Authorization decisions, by decision and reason (replays included).",
    ["decision", "reason"],
)
AUTHORIZATION_SECONDS = Histogram(
    "billing_authorization_seconds",
    "Time to answer one authorization, from the request to the recorded decision.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
RENEWALS = Counter(
    "billing_renewals_total",
    "Subscriptions found due for renewal, and those renewed (R8), by the subscription service.",
    ["outcome"],
)
WEBHOOKS = Counter(
    "billing_webhooks_total",
    "Stripe webhook deliveries, by outcome: stored, duplicate or refused.",
    ["outcome"],
)


def exposition() -> tuple[bytes, str]:
    """The current values in Prometheus' text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
