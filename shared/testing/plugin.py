"""pytest plugin: a real broker and a real PostgreSQL for the whole session, and per test a
fresh schema and a unique topic prefix (so tests never see each other's data).

Which servers:
- KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL set: those;
- else, with TESTCONTAINERS=1 and a Docker engine: Apache Kafka and PostgreSQL containers;
- else: the embedded stack (Tansu and PostgreSQL 18 from wheels), started once per session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import asyncpg
import pytest
import pytest_asyncio

from shared.devstack import embedded_stack

TEST_DATABASE = "billing_test"


@dataclass(frozen=True)
class Infrastructure:
    kafka_bootstrap: str
    database_url: str


@dataclass(frozen=True)
class Isolation:
    schema: str
    topic_prefix: str

    def env(self, infrastructure: Infrastructure, env_prefix: str) -> dict[str, str]:
        """Environment for the service whose variables start with `env_prefix` (`METERING_`):
        the same servers, the test's schema and topic prefix. Services tested together each
        need their own schema: give the others `schema_for(name)`."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": infrastructure.kafka_bootstrap,
            "DATABASE_URL": infrastructure.database_url,
            "TOPIC_PREFIX": self.topic_prefix,
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            f"{env_prefix}DB_SCHEMA": self.schema,
        }

    def schema_for(self, name: str) -> str:
        """Another schema of this test's (dropped with it)."""
        return f"{self.schema}_{name}"


def _testcontainers(stack: ExitStack) -> Infrastructure:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.1"))
    postgres = stack.enter_context(PostgresContainer("postgres:18", driver=None))
    return Infrastructure(kafka.get_bootstrap_server(), postgres.get_connection_url())


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    with ExitStack() as stack:
        kafka_url = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        database_url = os.environ.get("DATABASE_URL")
        if kafka_url is None and database_url is None and os.environ.get("TESTCONTAINERS") == "1":
            yield _testcontainers(stack)
        else:
            kafka_url, database_url = stack.enter_context(
                embedded_stack(TEST_DATABASE, kafka_url=kafka_url, database_url=database_url)
            )
            yield Infrastructure(kafka_url, database_url)


async def _isolated(infrastructure: Infrastructure) -> AsyncIterator[Isolation]:
    suffix = uuid.uuid4().hex[:10]
    isolation = Isolation(schema=f"t_{suffix}", topic_prefix=f"t{suffix}.")
    yield isolation
    conn = await asyncpg.connect(infrastructure.database_url)
    try:
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $1 || '\\_%'",
            isolation.schema,
        )
        for row in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def isolation(infrastructure: Infrastructure) -> AsyncIterator[Isolation]:
    async for found in _isolated(infrastructure):
        yield found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_isolation(infrastructure: Infrastructure) -> AsyncIterator[Isolation]:
    """One schema and topic prefix for a whole test module: for services started once per
    module (its tests then tell their data apart by organisation). The module's tests run in
    its event loop: `pytestmark = pytest.mark.asyncio(loop_scope="module")`."""
    async for found in _isolated(infrastructure):
        yield found


@pytest.fixture
async def db(
    infrastructure: Infrastructure, isolation: Isolation
) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search path is the test's schema."""
    conn = await asyncpg.connect(
        infrastructure.database_url, server_settings={"search_path": isolation.schema}
    )
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_db(
    infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search path is the module's schema (`module_isolation`)."""
    conn = await asyncpg.connect(
        infrastructure.database_url, server_settings={"search_path": module_isolation.schema}
    )
    try:
        yield conn
    finally:
        await conn.close()
