"""Kafka wiring shared by the services: the FastStream broker and consumer options."""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaBroker

from shared.settings import CommonSettings

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def make_broker(settings: CommonSettings, *, client_id: str) -> KafkaBroker:
    """A FastStream broker. Publishing waits for all in-sync replicas (`acks=all`).

    The idempotent producer is off: the embedded broker (Tansu) does not support it, and
    exactly-once effect comes from idempotent consumers anyway.
    """
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=2,
        max_request_size=MAX_REQUEST_BYTES,
        enable_idempotence=False,
        logger=logging.getLogger(f"{client_id}.broker"),
        log_level=logging.DEBUG,
    )


def consumer_options(
    settings: CommonSettings, *, fetch_bytes: int = 8 * 1024 * 1024
) -> dict[str, Any]:
    """Options for every consumer: offsets committed by us, after the database commit."""
    session = settings.kafka_session_timeout_ms
    return {
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session,
        "heartbeat_interval_ms": max(100, session // 10),
        "max_partition_fetch_bytes": fetch_bytes,
        # The broker answers a fetch after at most this long even with nothing new; the
        # default (500 ms) is what a new message waits, worst case, on an idle partition.
        "fetch_max_wait_ms": 25,
        "fetch_max_bytes": fetch_bytes * 8,
    }
