"""Faults across the whole system (`make faults`, which CI runs after `make test`).

Every service runs as its own process under `make run`'s supervisor (`shared.devstack`), on
the suite's broker and on a PostgreSQL of this test's own, which it can restart. During steady
usage, authorizations, member changes and a paid upgrade (Stripe's webhooks, every one
delivered twice), each service is killed with SIGKILL twice at random moments (the supervisor
starts it again) and PostgreSQL is restarted once; every usage and directory event is published
twice. Afterwards:

- every usage event is debited exactly once and every grant applied exactly once: each wallet
  equals its grants minus its usage (less what expired with the Free period ended by the
  upgrade), and equals its ledger;
- the subscription equals Stripe's (devstripe's), and `billing reconcile` finds nothing to
  repair and no wallet that differs from its ledger;
- every seat count equals the directory's.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET
from shared import identity
from shared.devstack import free_port
from shared.devstack.postgres import EmbeddedPostgres
from shared.testing import eventually, read_topic
from shared.testing.plugin import Infrastructure

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("metering", "subscriptions", "seats", "stripe-gateway", "dashboard")
PORTS = {
    "metering": "METERING_HTTP_PORT",
    "subscriptions": "SUBSCRIPTIONS_HTTP_PORT",
    "seats": "SEATS_HTTP_PORT",
    "stripe-gateway": "STRIPE_GATEWAY_HTTP_PORT",
    "dashboard": "DASHBOARD_HTTP_PORT",
}
TOKEN = {"Authorization": "Bearer dev-token"}
ORGANISATIONS = 4
TRAFFIC_SECONDS = 30.0
OWNER = "owner"


class Launcher:
    """`python -m shared.devstack run`, its output read in the background."""

    def __init__(self, env: dict[str, str], data: Path) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.devstack", "run", "--data", str(data)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, b""):  # type: ignore[union-attr]
            self.lines.append(line.decode(errors="replace"))

    async def wait_for(self, pattern: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines[-80:])}")

    def pid(self, service: str) -> int:
        found = re.findall(rf"started {service} \(pid (\d+)\)", "".join(self.lines))
        return int(found[-1])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=90)


@dataclass
class World:
    """What the test did, to compare the system with afterwards."""

    usage: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    members: dict[str, dict[str, tuple[int, bool]]] = field(default_factory=dict)
    upgraded: str | None = None
    kills: list[str] = field(default_factory=list)
    authorizations: int = 0

    def active(self, org: str) -> int:
        return sum(1 for _, active in self.members[org].values() if active)


def _event(type_: str, org: str, data: dict) -> bytes:
    return orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": type_,
            "organisation_id": org,
            "occurred_at": datetime.now(UTC).isoformat(),
            "producer": "fault-test",
            "data": data,
        }
    )


def _member(org: str, member: str, sequence: int, active: bool) -> bytes:
    kind = "workspace_member.joined.v1" if active else "workspace_member.deactivated.v1"
    return _event(
        kind,
        org,
        {
            "member_id": member,
            "role": "owner" if member == OWNER else "member",
            "status": "active" if active else "deactivated",
            "sequence": sequence,
        },
    )


@pytest.fixture
def own_postgres(tmp_path: Path):  # type: ignore[no-untyped-def]
    postgres = EmbeddedPostgres(tmp_path / "postgres", port=free_port())
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.stop()


async def test_the_whole_system_converges_after_kills_a_database_restart_and_duplicates(
    infrastructure: Infrastructure, own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    rng = random.Random(os.environ.get("FAULTS_SEED", str(time.time_ns())))
    database = own_postgres.create_database("billing")
    prefix = f"faults{uuid.uuid4().hex[:8]}."
    ports = {name: free_port() for name in SERVICES}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "TOPIC_PREFIX", "KAFKA_BOOTSTRAP_SERVERS"}
    }
    env.update(
        {PORTS[name]: str(port) for name, port in ports.items()},
        KAFKA_BOOTSTRAP_SERVERS=infrastructure.kafka_bootstrap,
        DATABASE_URL=database,
        TOPIC_PREFIX=prefix,
        DEVSTACK_DEVSTRIPE_PORT=str(free_port()),
        KAFKA_SESSION_TIMEOUT_MS="6000",
        SEATS_QUANTITY_POLL_SECONDS="0.2",
        NO_COLOR="1",
    )
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    launcher = Launcher(env, tmp_path / "stack")
    world = World()
    producer = AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap, acks="all")
    try:
        await launcher.wait_for("Everything is up")
        devstripe = re.search(r"devstripe\s+(http://\S+)", "".join(launcher.lines)).group(1)  # type: ignore[union-attr]
        async with httpx.AsyncClient(timeout=10) as http:
            await http.post(  # Stripe's disorder: every webhook delivered twice
                f"{devstripe}/_config/webhooks/stripe-gateway",
                data={
                    "url": f"{url['stripe-gateway']}/stripe/webhook",
                    "secret": DEV_WEBHOOK_SECRET,
                    "duplicate": "1",
                },
            )
        await producer.start()

        async def twice(topic: str, org: str, value: bytes) -> None:
            for _ in range(2):
                await producer.send_and_wait(prefix + topic, value, key=org.encode())

        organisations = [f"org_faults_{n}_{uuid.uuid4().hex[:6]}" for n in range(ORGANISATIONS)]
        for org in organisations:
            await twice(
                "workspace.members",
                org,
                _event(
                    "workspace_organisation.created.v1", org, {"created_at": "2026-11-30T00:00:00Z"}
                ),
            )
            world.members[org] = {}
            for member in (OWNER, "member_1", "member_2"):
                world.members[org][member] = (1, True)
                await twice("workspace.members", org, _member(org, member, 1, True))

        async with httpx.AsyncClient(timeout=5) as http:
            for org in organisations:
                await eventually(
                    lambda o=org: _on_plan(http, url, o, "free"), timeout=60, what=f"{org} on Free"
                )

            stop = asyncio.Event()
            await asyncio.gather(
                _usage(http, url, world, organisations, twice, rng, stop),
                _directory(world, organisations, twice, rng, stop),
                _upgrade(http, url, devstripe, world, organisations[0], stop),
                _chaos(launcher, own_postgres, world, rng, stop),
            )
            await _converged(http, url, world, organisations, database, infrastructure, prefix)
        assert sorted(set(world.kills)) == sorted([*SERVICES, "postgres"])
        restarted = "".join(launcher.lines).count("exited with -9; starting it again")
        assert restarted >= len(SERVICES), "the kills did not land"
        assert world.authorizations > 10 and sum(map(len, world.usage.values())) > 100
        print(
            f"faults: {restarted} services killed and restarted, PostgreSQL restarted once, "
            f"{sum(map(len, world.usage.values()))} usage events (each twice), "
            f"{world.authorizations} authorizations, {sum(map(len, world.members.values()))} "
            f"members, {world.upgraded} upgraded to Pro with every webhook delivered twice"
        )
        await _reconciled(env, url)
    finally:
        await producer.stop()
        code = launcher.stop()
    assert code == 0, "".join(launcher.lines[-40:])


async def _on_plan(http: httpx.AsyncClient, url: dict[str, str], org: str, plan: str) -> bool:
    try:
        got = await http.get(
            f"{url['subscriptions']}/v1/organisations/{org}/subscription", headers=TOKEN
        )
    except httpx.HTTPError:
        return False
    return got.status_code == 200 and got.json()["plan"] == plan


async def _usage(http, url, world, organisations, twice, rng, stop) -> None:  # type: ignore[no-untyped-def]
    """Messages, half of them authorized first; each usage event published twice."""
    while not stop.is_set():
        org = rng.choice(organisations)
        message = f"msg_{uuid.uuid4().hex[:12]}"
        credits = rng.randint(1, 5)
        if rng.random() < 0.5:
            try:
                answer = await http.post(
                    f"{url['metering']}/v1/authorizations",
                    headers=TOKEN,
                    json={
                        "organisation_id": org,
                        "member_id": OWNER,
                        "message_id": message,
                        "estimate": credits,
                    },
                )
                world.authorizations += answer.status_code == 200
            except httpx.HTTPError:
                pass  # metering is down: the chat gateway would try again or refuse
        world.usage[org].append(credits)
        await twice(
            "agent.usage",
            org,
            _event(
                "agent_message.processed.v1",
                org,
                {
                    "member_id": OWNER,
                    "agent_id": "agent_1",
                    "conversation_id": "conv_1",
                    "message_id": message,
                    "credits": credits,
                },
            ),
        )
        await asyncio.sleep(0.03)


async def _directory(world, organisations, twice, rng, stop) -> None:  # type: ignore[no-untyped-def]
    """Members join and leave (each announcement twice)."""
    joined = 0
    while not stop.is_set():
        await asyncio.sleep(0.7)
        org = rng.choice(organisations)
        members = world.members[org]
        leaving = [m for m, (_, active) in members.items() if active and m != OWNER]
        if leaving and rng.random() < 0.4:
            member = rng.choice(leaving)
            sequence = members[member][0] + 1
            members[member] = (sequence, False)
            await twice("workspace.members", org, _member(org, member, sequence, False))
        else:
            joined += 1
            member = f"member_new_{joined}"
            members[member] = (1, True)
            await twice("workspace.members", org, _member(org, member, 1, True))


async def _upgrade(http, url, devstripe, world, org, stop) -> None:  # type: ignore[no-untyped-def]
    """The owner buys Pro in Checkout while services die around it; tried until it goes
    through (a refused or unanswered request is the owner clicking again)."""
    await asyncio.sleep(4)
    while not stop.is_set():
        acting = {**TOKEN, identity.IDENTITY_HEADER: identity.sign(org, OWNER, datetime.now(UTC))}
        try:
            answer = await http.post(
                f"{url['subscriptions']}/v1/subscription/change",
                headers=acting,
                json={"plan": "pro", "cycle": "monthly"},
                timeout=30,
            )
            if answer.status_code == 200:
                session = answer.json()["checkout_url"].rsplit("/", 1)[1]
                paid = await http.post(f"{devstripe}/_devstripe/checkout/{session}/complete")
                if paid.status_code < 300:
                    world.upgraded = org
                    return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1)


async def _chaos(launcher, postgres, world, rng, stop) -> None:  # type: ignore[no-untyped-def]
    """Each service SIGKILLed twice at random moments; PostgreSQL restarted once."""
    moments = sorted(
        [(rng.uniform(2, TRAFFIC_SECONDS - 6), s) for s in SERVICES for _ in range(2)]
        + [(rng.uniform(8, TRAFFIC_SECONDS - 10), "postgres")]
    )
    began = time.monotonic()
    for at, what in moments:
        await asyncio.sleep(max(0.0, began + at - time.monotonic()))
        if what == "postgres":
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(postgres.start)
        else:
            try:
                os.kill(launcher.pid(what), signal.SIGKILL)
            except ProcessLookupError:
                pass  # already down (killed moments ago, not started again yet)
        world.kills.append(what)
    await asyncio.sleep(max(0.0, began + TRAFFIC_SECONDS - time.monotonic()))
    stop.set()


async def _converged(http, url, world, organisations, database, infrastructure, prefix) -> None:  # type: ignore[no-untyped-def]
    conn = await _connect(database)
    try:

        async def usage_and_seats_settled() -> bool:
            for org in organisations:
                debits = await conn.fetchrow(
                    """SELECT count(*) AS n, coalesce(-sum(amount), 0) AS total
                       FROM metering.ledger WHERE organisation_id = $1 AND kind = 'debit'""",
                    org,
                )
                if (debits["n"], debits["total"]) != (len(world.usage[org]), sum(world.usage[org])):
                    return False
                try:
                    seats = await http.get(
                        f"{url['seats']}/v1/organisations/{org}/seats", headers=TOKEN
                    )
                except httpx.HTTPError:
                    return False
                if seats.status_code != 200 or seats.json()["seats_used"] != world.active(org):
                    return False
            return True

        await eventually(
            usage_and_seats_settled, timeout=120, interval=0.5, what="usage and seats settled"
        )
        upgraded = world.upgraded
        assert upgraded is not None, "the upgrade never went through"

        await eventually(
            lambda: _on_plan(http, url, upgraded, "pro"),
            timeout=90,
            what=f"{upgraded} on Pro, as Stripe has it",
        )

        grants = await read_topic(infrastructure.kafka_bootstrap, prefix + "credits.grant-requests")
        commanded: dict[str, dict[str, int]] = defaultdict(dict)
        for record in grants:
            event = orjson.loads(record.value)
            commanded[event["organisation_id"]][event["data"]["period_key"]] = event["data"][
                "amount"
            ]

        async def wallets_equal_grants_minus_usage() -> bool:
            for org in organisations:
                entries = {
                    row["kind"]: row["total"]
                    for row in await conn.fetch(
                        """SELECT kind, sum(amount) AS total FROM metering.ledger
                           WHERE organisation_id = $1 GROUP BY kind""",
                        org,
                    )
                }
                balance = await conn.fetchval(
                    "SELECT balance FROM metering.wallets WHERE organisation_id = $1", org
                )
                granted = sum(commanded[org].values())
                expired = entries.get("expiry", 0)
                assert org == upgraded or expired == 0, (org, entries)
                assert set(entries) <= {"grant", "debit", "expiry"}, entries
                if entries.get("grant", 0) != granted:
                    return False
                if balance != granted - sum(world.usage[org]) + expired:
                    return False
                assert balance == sum(entries.values())
            return True

        await eventually(
            wallets_equal_grants_minus_usage, timeout=60, what="every wallet = grants - usage"
        )
    finally:
        await conn.close()


async def _connect(database: str) -> asyncpg.Connection:
    async def connect() -> asyncpg.Connection | None:
        try:
            return await asyncpg.connect(database)
        except (OSError, asyncpg.PostgresError):
            return None

    return await eventually(connect, timeout=30, what="the database")


async def _reconciled(env: dict[str, str], url: dict[str, str]) -> None:
    """`billing reconcile`: Stripe against the gateway and the subscriptions, every wallet
    against its ledger."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.cli", "reconcile"],
        cwd=ROOT,
        env={
            **env,
            "STRIPE_GATEWAY_URL": url["stripe-gateway"],
            "SUBSCRIPTIONS_URL": url["subscriptions"],
            "METERING_URL": url["metering"],
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"repaired": 0' in done.stdout, done.stdout
    assert '"mismatches": []' in done.stdout, done.stdout
