"""PostgreSQL access: one asyncpg pool per service, bound to the service's own schema, and
numbered plain-SQL migrations.

A service owns one schema and never reads another's. Migrations are files named
`NNN_description.sql` in a folder; each runs once, in its own transaction, with `search_path`
set to the service's schema, so the SQL names no schema. Several components may migrate the same
schema (the shared outbox, then the service), each with its own version numbers. An advisory
lock makes concurrent starts of the same service safe.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg

from shared.logging import get_logger
from shared.settings import validate_schema_name

log = get_logger("shared.db")

T = TypeVar("T")

_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migrations:
    component: str
    directory: Path

    def files(self) -> list[tuple[int, Path]]:
        found = []
        for path in sorted(self.directory.iterdir()):
            match = _MIGRATION_FILE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        versions = [v for v, _ in found]
        if len(set(versions)) != len(versions):
            raise ValueError(f"duplicate migration numbers in {self.directory}")
        return found


async def create_pool(
    dsn: str,
    schema: str,
    *,
    application_name: str,
    min_size: int = 2,
    max_size: int = 10,
    generic_plans: bool = False,
) -> asyncpg.Pool:
    validate_schema_name(schema)
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_keep_session,
        server_settings={
            "search_path": schema,
            "application_name": application_name,
            "timezone": "UTC",
            **({"plan_cache_mode": "force_generic_plan"} if generic_plans else {}),
        },
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state worth clearing (no LISTEN, SET or advisory locks
    are taken on them), so the reset query, a round trip per release, is skipped. asyncpg still
    rolls back a transaction left open."""


async def apply_migrations(dsn: str, schema: str, sources: Sequence[Migrations]) -> list[str]:
    """Bring `schema` up to date. Returns what was applied, as `component/file` names."""
    validate_schema_name(schema)
    applied: list[str] = []
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", f"migrate:{schema}")
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       component  text        NOT NULL,
                       version    integer     NOT NULL,
                       name       text        NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            for source in sources:
                done = {
                    row["version"]
                    for row in await conn.fetch(
                        "SELECT version FROM schema_migrations WHERE component = $1",
                        source.component,
                    )
                }
                for version, path in source.files():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(
                            """INSERT INTO schema_migrations (component, version, name)
                               VALUES ($1, $2, $3)""",
                            source.component,
                            version,
                            path.name,
                        )
                    applied.append(f"{source.component}/{path.name}")
                    log.info(
                        "migration applied",
                        schema=schema,
                        component=source.component,
                        file=path.name,
                    )
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))", f"migrate:{schema}"
            )
    finally:
        await conn.close()
    return applied


async def run_alone(
    pool: asyncpg.Pool, name: str, step: Callable[[], Awaitable[T]]
) -> tuple[bool, T | None]:
    """Run `step()` unless another instance (of any replica sharing the database) is running
    the step of the same `name` now: a session advisory lock on the name, tried, never
    waited for. Returns whether it ran, and what it returned."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name):
            return False, None
        try:
            return True, await step()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", name)
