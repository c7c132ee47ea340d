"""Inputs from other teams, at their extremes: for every topic of the registry, generated
records (each type's example with values swapped for extreme ones: integers past 32 and 64
bits, empty, long and control-character strings, wrong types, lists where scalars go) are
published while every service runs, and every consumer of that topic takes each one, stored
or parked, without stalling a partition."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from unittest import mock

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dashboard.app import SERVICE as DASHBOARD
from services.metering.app import SERVICE as METERING
from services.seats.app import SERVICE as SEATS
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.settings import StripeGatewaySettings
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from shared.clock import SystemClock
from shared.events.examples import example
from shared.service import Kernel
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import running_service
from shared.topics import REGISTRY, TopicSpec
from tests.stripe_gateway.conftest import running_gateway

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

EXTREME_INTEGERS = [
    0,
    -1,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**40,
]
EXTREME_STRINGS = ["", "\x00", "\u202e\u0000x", "x" * 129, "é" * 600, "😀" * 300, "y" * 5000]
INTEGERS = st.sampled_from(EXTREME_INTEGERS) | st.integers()
STRINGS = st.sampled_from(EXTREME_STRINGS) | st.text(max_size=200)
ANY = (
    INTEGERS | STRINGS | st.booleans() | st.none() | st.just(1.5) | st.just([1, "x"]) | st.just({})
)


def _leaves(doc: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, (*path, k))] + [path]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, (*path, i))] + [path]
    return [path]


def _put(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _put(copy[head], tuple(rest), value)
    return copy


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def extreme(draw: st.DrawFn, spec: TopicSpec) -> tuple[bytes, bytes]:
    """One record for `spec`'s topic: an example with up to three values made extreme."""
    doc = orjson.loads(example(draw(st.sampled_from(spec.schemas)).type_name))
    for _ in range(draw(st.integers(0, 3))):
        paths = [p for p in _leaves(doc) if p and p[0] != "type"] if isinstance(doc, dict) else []
        if not paths:
            break
        numbers = [p for p in paths if isinstance(_get(doc, p), int)]
        path = draw(
            st.sampled_from(numbers) if numbers and draw(st.booleans()) else st.sampled_from(paths)
        )
        original = _get(doc, path)
        if isinstance(original, bool) or original is None:
            value = draw(ANY)
        elif isinstance(original, int):
            value = draw(INTEGERS | ANY)
        elif isinstance(original, str):
            value = draw(STRINGS | ANY)
        else:
            value = draw(ANY)
        doc = _put(doc, path, value)
    key = doc.get("organisation_id") if isinstance(doc, dict) else None
    key = key if isinstance(key, str) and 0 < len(key.encode()) < 200 else "org_extreme"
    return key.encode("utf-8", "surrogatepass"), json.dumps(doc).encode("utf-8", "surrogatepass")


def sweep(spec: TopicSpec) -> list[tuple[bytes, bytes]]:
    """Every example of `spec` with each number, then each string, set to each extreme."""
    found = []
    for schema in spec.schemas:
        doc = orjson.loads(example(schema.type_name))
        key = doc["organisation_id"].encode()
        for path in (p for p in _leaves(doc) if p and p[0] != "type"):
            original = _get(doc, path)
            if isinstance(original, bool):
                continue
            values = (
                EXTREME_INTEGERS
                if isinstance(original, int)
                else EXTREME_STRINGS
                if isinstance(original, str)
                else []
            )
            found += [(key, json.dumps(_put(doc, path, v)).encode()) for v in values]
    return found


def settings_of(kind: type, env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return kind()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kernels(
    infrastructure: Infrastructure, module_isolation: Isolation, devstripe: Devstripe
) -> AsyncIterator[list[Kernel]]:
    """Every service, each with its consumers, on the module's topics and schemas."""
    found: list[Kernel] = []
    clock = SystemClock()
    async with AsyncExitStack() as stack:
        for service in (METERING, SUBSCRIPTIONS, SEATS, DASHBOARD):
            env = module_isolation.env(infrastructure, service.env_prefix)
            env[f"{service.env_prefix}DB_SCHEMA"] = module_isolation.schema_for(service.name)
            kernel, _ = await stack.enter_async_context(
                running_service(service, settings_of(service.settings, env), clock)
            )
            found.append(kernel)
        env = module_isolation.env(infrastructure, "STRIPE_GATEWAY_")
        env["STRIPE_GATEWAY_DB_SCHEMA"] = module_isolation.schema_for("gateway")
        env["STRIPE_GATEWAY_API_BASE"] = devstripe.url
        gateway = await stack.enter_async_context(
            running_gateway(settings_of(StripeGatewaySettings, env), devstripe)
        )
        found.append(gateway.kernel)
        yield found


async def _publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=1 << 22)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, value, key=key) for key, value in records]
    finally:
        await producer.stop()
    return [(TopicPartition(topic, m.partition), m.offset) for m in sent]


@pytest.mark.parametrize("spec", [s for s in REGISTRY], ids=lambda s: s.name)
async def test_every_consumer_stores_or_parks_extreme_records_and_moves_on(
    kernels: list[Kernel], spec: TopicSpec
) -> None:
    prefix = kernels[0].settings.topic_prefix
    consumers = [
        c
        for k in kernels
        for c in k.consumers
        if c.dead_letter_topic == spec.dead_letter_topic(prefix)
    ]
    topic = spec.topic(prefix)
    bootstrap = kernels[0].settings.kafka_bootstrap_servers

    batches: list[list[tuple[bytes, bytes]]] = []

    @settings(
        max_examples=5,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(records=st.lists(extreme(spec), min_size=10, max_size=30))
    def generated(records: list[tuple[bytes, bytes]]) -> None:
        batches.append(records)

    generated()  # drawn here, sent below: the consumers run in this module's event loop
    for records in [sweep(spec), *batches]:
        sent = await _publish(bootstrap, topic, records)
        await eventually(
            lambda sent=sent, records=records: _taken(consumers, sent, records),
            what=f"every consumer of {spec.name} took {records}",
        )


async def _taken(consumers: list, sent: list, records: list) -> bool:
    """Each consumer applied or parked every record sent, and stalls no partition."""
    for consumer in consumers:
        assert not consumer.stalled(), (consumer.name, consumer.stalled(), records)
        if any(consumer.positions.get(tp, 0) <= offset for tp, offset in sent):
            return False
    return True
