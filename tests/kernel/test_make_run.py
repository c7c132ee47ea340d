"""`make run`'s own code path: embedded broker and database started by the project, topics,
migrations, every service; a usage event from a plain Kafka client changes the balance the HTTP
API shows; a service killed is started again by itself, and what was published meanwhile is
applied; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from shared.devstack import free_port
from shared.devstack.processes import port_in_use
from shared.testing import eventually, produce

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Output:
    """The launcher's output, read line by line in the background."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        for line in iter(process.stdout.readline, b""):  # type: ignore[union-attr]
            self.lines.append(line.decode(errors="replace"))

    async def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if found := re.search(pattern, line):
                    return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")


def usage(organisation: str, credits: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "agent_message.processed.v1",
            "organisation_id": organisation,
            "occurred_at": "2026-11-27T10:00:00Z",
            "producer": "agent-runtime",
            "data": {
                "member_id": "member_1",
                "agent_id": "agent_1",
                "conversation_id": "conv_1",
                "message_id": f"msg_{uuid.uuid4().hex[:8]}",
                "credits": credits,
            },
        }
    )


def directory(organisation: str) -> list[tuple[bytes, bytes]]:
    """What the member directory publishes for a new organisation and its owner (plain JSON)."""

    def event(type_: str, data: dict) -> tuple[bytes, bytes]:
        body = {
            "event_id": str(uuid.uuid4()),
            "type": type_,
            "organisation_id": organisation,
            "occurred_at": "2026-11-27T10:00:00Z",
            "producer": "member-directory",
            "data": data,
        }
        return organisation.encode(), orjson.dumps(body)

    return [
        event("workspace_organisation.created.v1", {"created_at": "2026-11-27T10:00:00Z"}),
        event(
            "workspace_member.joined.v1",
            {"member_id": "ada", "role": "owner", "status": "active", "sequence": 1},
        ),
    ]


async def test_make_run_serves_restarts_and_stops(tmp_path: Path) -> None:
    launcher, output, ports = _launch(tmp_path)
    kafka_port, http_port = ports["DEVSTACK_KAFKA_PORT"], ports["METERING_HTTP_PORT"]
    gateway_port, subscriptions_port = (
        ports["STRIPE_GATEWAY_HTTP_PORT"],
        ports["SUBSCRIPTIONS_HTTP_PORT"],
    )
    seats_port, dashboard_port = ports["SEATS_HTTP_PORT"], ports["DASHBOARD_HTTP_PORT"]
    env = _environment(ports)
    kafka = f"127.0.0.1:{kafka_port}"
    try:
        await output.wait_for("Everything is up")
        await output.wait_for(rf"broker\s+127\.0\.0\.1:{kafka_port}")
        await output.wait_for(rf"metering\s+http://127\.0\.0\.1:{http_port}")
        await output.wait_for(rf"stripe-gateway\s+http://127\.0\.0\.1:{gateway_port}")
        await output.wait_for(rf"subscriptions\s+http://127\.0\.0\.1:{subscriptions_port}")
        await output.wait_for(rf"seats\s+http://127\.0\.0\.1:{seats_port}")
        await output.wait_for(rf"dashboard\s+http://127\.0\.0\.1:{dashboard_port}")
        await output.wait_for(rf"billing page\s+http://127\.0\.0\.1:{dashboard_port}/billing")
        await output.wait_for(
            rf"stripe webhook\s+http://127\.0\.0\.1:{gateway_port}/stripe/webhook"
        )
        first_pid = int((await output.wait_for(r"started metering \(pid (\d+)\)")).group(1))
        # The services' JSON lines, readable, prefixed with the service (no colour: no tty).
        await output.wait_for(r"^metering +\| \d\d:\d\d:\d\d info +metering started  schema=")
        assert not any(line.startswith("{") for line in output.lines)

        await produce(kafka, "agent.usage", [(b"org_outside", usage("org_outside", 42))])

        async def balance() -> int | None:
            try:
                async with httpx.AsyncClient(headers={"Authorization": "Bearer dev-token"}) as c:
                    response = await c.get(
                        f"http://127.0.0.1:{http_port}/v1/organisations/org_outside/credits"
                    )
            except httpx.HTTPError:
                return None
            return response.json()["balance"] if response.status_code == 200 else None

        assert await eventually(balance, what="balance of org_outside") == -42

        seen = len(output.lines)
        os.kill(first_pid, signal.SIGKILL)
        await output.wait_for(r"metering exited with -9; starting it again", after=seen)
        await produce(kafka, "agent.usage", [(b"org_outside", usage("org_outside", 8))])
        second = await output.wait_for(r"started metering \(pid (\d+)\)", after=seen)
        assert int(second.group(1)) != first_pid

        async def settled() -> bool:
            return await balance() == -50

        await eventually(settled, timeout=60, what="the event published while down is applied")

        # The member directory announces an organisation: subscriptions puts it on Free, and
        # seats counts its owner under Free's limit (services talking through the topics).
        await produce(kafka, "workspace.members", directory("org_fresh"))

        async def seats() -> dict | None:
            try:
                async with httpx.AsyncClient(headers={"Authorization": "Bearer dev-token"}) as c:
                    response = await c.get(
                        f"http://127.0.0.1:{seats_port}/v1/organisations/org_fresh/seats"
                    )
            except httpx.HTTPError:
                return None
            found = response.json() if response.status_code == 200 else None
            return found if found and found["plan"] == "free" else None

        found = await eventually(seats, timeout=60, what="org_fresh on Free, with its owner")
        assert (found["seats_used"], found["seat_limit"], found["owners"]) == (1, 3, ["ada"])

        async def page() -> str | None:  # the Billing page, with make run's query identity
            try:
                async with httpx.AsyncClient() as c:
                    response = await c.get(
                        f"http://127.0.0.1:{dashboard_port}/billing",
                        params={"organisation": "org_fresh", "member": "ada"},
                    )
            except httpx.HTTPError:
                return None
            text = response.text if response.status_code == 200 else ""
            seated = "id='seats-used'>1<" in text and "id='seat-limit'>3<" in text
            return text if seated else None

        await eventually(page, timeout=60, what="org_fresh's Billing page shows its seat")

        # Back from Stripe (no identity in the address): the development session finds it.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dashboard_port}") as c:
            opened = await c.get("/billing", params={"organisation": "org_fresh", "member": "ada"})
            back = await c.get("/billing", params={"checkout": "cancelled"})
        assert opened.status_code == 200 and back.status_code == 200, back.text
        assert "data-code='checkout_cancelled'" in back.text

        # An operator's promotion, a bucket that expires in a week: it pays the debt first.
        cli_env = {
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "STRIPE_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "SUBSCRIPTIONS_URL": f"http://127.0.0.1:{subscriptions_port}",
            "METERING_URL": f"http://127.0.0.1:{http_port}",
        }
        granted = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "shared.cli", "grant", "org_outside", "500"),
                *("--reason", "promotion", "--expires-in-days", "7"),
            ],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert granted.returncode == 0, granted.stdout + granted.stderr

        async def promoted() -> dict | None:
            async with httpx.AsyncClient(headers={"Authorization": "Bearer dev-token"}) as c:
                response = await c.get(
                    f"http://127.0.0.1:{http_port}/v1/organisations/org_outside/credits"
                )
            found = response.json()
            return found if found["balance"] == 450 else None

        credits = await eventually(promoted, timeout=60, what="the promotion applied")
        assert credits["debt"] == 0
        assert [(b["source"], b["granted"], b["remaining"]) for b in credits["buckets"]] == [
            ("promotion", 500, 450)
        ]

        # `billing reconcile`: Stripe against the gateway, organisations against Stripe, every
        # wallet against its ledger; nothing to repair in a stack that just started.
        reconciled = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shared.cli", "reconcile"],
            cwd=ROOT,
            env={
                **env,
                "STRIPE_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
                "SUBSCRIPTIONS_URL": f"http://127.0.0.1:{subscriptions_port}",
                "METERING_URL": f"http://127.0.0.1:{http_port}",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        assert '"repaired": 0' in reconciled.stdout
        assert '"mismatches": []' in reconciled.stdout
    finally:
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(timeout=60)
    assert code == 0
    for port in ports.values():
        assert not port_in_use("127.0.0.1", port)


STACK_SERVICES = ("METERING", "STRIPE_GATEWAY", "SUBSCRIPTIONS", "SEATS", "DASHBOARD")


def _environment(ports: dict[str, int]) -> dict[str, str]:
    """This process's environment without the test's servers (the stack starts its own), with
    `ports`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TOPIC_PREFIX"}
    }
    env.update({key: str(value) for key, value in ports.items()}, KAFKA_SESSION_TIMEOUT_MS="2000")
    return env


def _launch(tmp_path: Path, **settings: int) -> tuple[subprocess.Popen[bytes], Output, dict]:
    """`make run` on free ports (`settings` overrides some), its output read."""
    ports = {
        "DEVSTACK_KAFKA_PORT": free_port(),
        "DEVSTACK_POSTGRES_PORT": free_port(),
        "DEVSTACK_DEVSTRIPE_PORT": free_port(),
        **{f"{name}_HTTP_PORT": free_port() for name in STACK_SERVICES},
        **settings,
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "shared.devstack", "run", "--data", str(tmp_path)],
        cwd=ROOT,
        env=_environment(ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return launcher, Output(launcher), ports


@pytest.mark.parametrize("setting", ["METERING_HTTP_PORT", "DEVSTACK_POSTGRES_PORT"])
async def test_a_busy_port_is_answered_in_one_line_naming_the_setting(
    tmp_path: Path, setting: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher, output, _ = _launch(tmp_path, **{setting: port})
        code = await asyncio.to_thread(launcher.wait, 60)
    await output.wait_for("is in use")
    text = "".join(output.lines)
    assert code == 1, text
    assert re.search(rf"port {port} \(.+\) is in use: .*set {setting} to a free port", text)
    assert "Traceback" not in text and "started" not in text
    assert len(output.lines) == 1, text


async def test_nothing_outlives_make_run_killed_outright(tmp_path: Path) -> None:
    """SIGKILL while it starts the services (no stop of its own can run): the kernel stops
    the broker, the database and every service it had started."""
    launcher, output, ports = _launch(tmp_path)
    try:
        await output.wait_for(r"started metering \(pid (\d+)\)")
        started = [int(m) for m in re.findall(r"\(pid (\d+)\)", "".join(output.lines))]
        for running in ("DEVSTACK_KAFKA_PORT", "DEVSTACK_POSTGRES_PORT", "METERING_HTTP_PORT"):
            await eventually(
                lambda port=ports[running]: asyncio.sleep(0, port_in_use("127.0.0.1", port)),
                what=f"{running} listening",
            )
    finally:
        launcher.kill()
        launcher.wait(timeout=10)

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return False
        return state != "Z"

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in started) and not any(
            port_in_use("127.0.0.1", port) for port in ports.values()
        )

    await eventually(all_gone, timeout=45, what="every process make run started stopped")
