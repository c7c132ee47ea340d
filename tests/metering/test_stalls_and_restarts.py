"""A partition that cannot advance shows in readiness, with its lag, while the others flow; a
restarted metering decides authorizations before its consumer groups have joined."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import asyncpg
import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.metering.settings import DEV_API_TOKEN, MeteringSettings
from shared.clock import FrozenClock
from shared.devstack import free_port
from shared.testing import eventually
from shared.topics import AGENT_USAGE
from tests.metering.conftest import running_metering, usage_event

AUTH = {"Authorization": f"Bearer {DEV_API_TOKEN}"}


def on_other_partitions(count: int) -> list[str]:
    """Organisations whose usage lands on `count` different partitions."""
    partitions = list(range(AGENT_USAGE.partitions))
    found: dict[int, str] = {}
    for n in range(1_000):
        organisation = f"org_p{n}"
        found.setdefault(
            DefaultPartitioner()(organisation.encode(), partitions, partitions), organisation
        )
        if len(found) == count:
            return list(found.values())
    raise AssertionError("not enough partitions")


async def test_a_stalled_partition_shows_in_readiness_with_its_lag_while_others_advance(
    metering_settings: MeteringSettings, clock: FrozenClock, db: asyncpg.Connection
) -> None:
    blocked, free = on_other_partitions(2)
    settings = metering_settings.model_copy(update={"stall_grace_seconds": 0.0})
    async with running_metering(settings, clock) as metering:
        # Not the data's fault (a permission, a bug): neither poison to park nor to retry fast.
        await db.execute(
            f"""CREATE FUNCTION refuse_blocked() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'no ledger for you' USING ERRCODE = 'insufficient_privilege';
                END $$;
                CREATE TRIGGER refuse_blocked BEFORE INSERT ON ledger FOR EACH ROW
                    WHEN (NEW.organisation_id = '{blocked}') EXECUTE FUNCTION refuse_blocked();"""
        )
        await metering.publish_usage(usage_event(blocked, 3), usage_event(blocked, 4))
        await metering.publish_usage(usage_event(free, 5))

        await metering.wait_for(free, balance=-5)

        async def stalled() -> dict | None:
            response = await metering.http.get("/readyz")
            body = response.json()
            return (
                body
                if response.status_code == 503 and body["consumers"]["usage"]["stalled"]
                else None
            )

        body = await eventually(stalled, what="readiness reports the stalled partition")
        (partition,) = body["consumers"]["usage"]["stalled"]
        assert partition["topic"] == metering.topic(AGENT_USAGE)
        assert partition["offset"] == 0
        assert partition["lag"] == 2
        assert "InsufficientPrivilege" in partition["error"]
        assert body["status"] == "not-ready" and body["database"] == "ok"
        assert await metering.credits(blocked) is None

        await db.execute("DROP TRIGGER refuse_blocked ON ledger")
        await metering.wait_for(blocked, balance=-7)

        async def ready() -> bool:
            return (await metering.http.get("/readyz")).status_code == 200

        await eventually(ready, what="ready again")


@pytest.mark.slow
async def test_a_restarted_metering_decides_before_its_consumer_groups_have_joined(
    metering_env: dict[str, str],
) -> None:
    port = free_port()
    # A long session: after a SIGKILL, the dead member holds the groups for up to 30 s.
    env = {
        **os.environ,
        **metering_env,
        "METERING_HTTP_PORT": str(port),
        "KAFKA_SESSION_TIMEOUT_MS": "30000",
    }
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.metering"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=2) as client:

            async def consumers_running() -> bool:
                try:
                    body = (await client.get("/readyz")).json()
                except httpx.HTTPError:
                    return False
                return body["consumers"]["usage"]["state"] == "running"

            await eventually(consumers_running, timeout=60, what="first start joined")
            process.send_signal(signal.SIGKILL)
            process.wait()

            process = subprocess.Popen(
                [sys.executable, "-m", "services.metering"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            async def decided() -> dict | None:
                try:
                    response = await client.post(
                        "/v1/authorizations",
                        json={
                            "organisation_id": "org_back",
                            "member_id": "m",
                            "message_id": "msg_1",
                        },
                    )
                except httpx.HTTPError:
                    return None
                return response.json() if response.status_code == 200 else None

            decision = await eventually(decided, timeout=30, interval=0.02, what="a decision")
            body = (await client.get("/readyz")).json()
    finally:
        process.kill()
        process.wait()

    assert (decision["decision"], decision["reason"]) == ("denied", "no_wallet")
    assert body["status"] == "ready"
    assert {c["state"] for c in body["consumers"].values()} == {"starting"}
