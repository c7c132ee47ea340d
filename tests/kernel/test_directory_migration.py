"""The services that kept their own copy of the member directory move it into the kernel's
projection (`shared.directory`) when they migrate, rows included."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.seats.app import SERVICE as SEATS
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from shared import directory
from shared.db import Migrations, apply_migrations
from shared.events.members import MemberRole, MemberStatus
from shared.service import Service
from shared.testing.plugin import Infrastructure, Isolation


@pytest.mark.parametrize(
    ("service", "before"), [(SUBSCRIPTIONS, 3), (SEATS, 2)], ids=["subscriptions", "seats"]
)
async def test_members_kept_by_a_service_move_into_the_kernels_directory(
    service: Service,
    before: int,
    infrastructure: Infrastructure,
    isolation: Isolation,
    tmp_path: Path,
) -> None:
    dsn, schema = infrastructure.database_url, isolation.schema
    old = tmp_path / "old"
    old.mkdir()
    for version, path in Migrations(service.name, service.migrations).files():
        if version < before:
            shutil.copy(path, old / path.name)
    kernel = [m for m in service.all_migrations if m.component != service.name]
    await apply_migrations(dsn, schema, [*kernel, Migrations(service.name, old)])
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(
            """INSERT INTO members (organisation_id, member_id, role, status, sequence, updated_at)
               VALUES ('org_kept', 'member_ada', 'owner', 'active', 7, $1)""",
            datetime(2026, 1, 1, tzinfo=UTC),
        )
        applied = await apply_migrations(dsn, schema, service.all_migrations)
        assert applied == [
            f"{service.name}/{p.name}"
            for v, p in Migrations(service.name, service.migrations).files()
            if v >= before
        ]
        kept = await directory.member(conn, "org_kept", "member_ada")
        assert kept == directory.Member("member_ada", MemberRole.OWNER, MemberStatus.ACTIVE)
        assert await conn.fetchval("SELECT to_regclass('members')") is None
    finally:
        await conn.close()
