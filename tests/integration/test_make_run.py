"""`make run`'s own code path: embedded broker and database started by the project, topics,
migrations, the metering service; a usage event from a plain Kafka client changes the balance
the HTTP API shows; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from shared.devstack import free_port
from shared.devstack.processes import port_in_use
from shared.testing import eventually, produce

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


async def test_make_run_serves_balances_from_usage_published_by_any_client(tmp_path: Path) -> None:
    kafka_port, postgres_port, http_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TOPIC_PREFIX"}
    }
    env.update(
        DEVSTACK_KAFKA_PORT=str(kafka_port),
        DEVSTACK_POSTGRES_PORT=str(postgres_port),
        METERING_HTTP_PORT=str(http_port),
        KAFKA_SESSION_TIMEOUT_MS="2000",
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "shared.devstack", "run", "--data", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        banner = await asyncio.wait_for(_read_until(launcher, b"Everything is up"), timeout=90)
        assert f"127.0.0.1:{kafka_port}".encode() in banner
        assert f"http://127.0.0.1:{http_port}".encode() in banner

        usage = {
            "event_id": "0b9f8c4e-8f0a-4d0e-9a4e-4b1f2b3c4d5e",
            "type": "agent_message.processed.v1",
            "organisation_id": "org_outside",
            "occurred_at": "2026-11-27T10:00:00Z",
            "producer": "agent-runtime",
            "data": {
                "member_id": "member_1",
                "agent_id": "agent_1",
                "conversation_id": "conv_1",
                "message_id": "msg_1",
                "credits": 42,
            },
        }
        await produce(
            f"127.0.0.1:{kafka_port}", "agent.usage", [(b"org_outside", orjson.dumps(usage))]
        )

        async def balance() -> int | None:
            async with httpx.AsyncClient(headers={"Authorization": "Bearer dev-token"}) as client:
                response = await client.get(
                    f"http://127.0.0.1:{http_port}/v1/organisations/org_outside/credits"
                )
            return response.json()["balance"] if response.status_code == 200 else None

        assert await eventually(balance, what="balance of org_outside") == -42
    finally:
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(timeout=60)
    assert code == 0
    for port in (kafka_port, postgres_port, http_port):
        assert not port_in_use("127.0.0.1", port)


async def _read_until(process: subprocess.Popen[bytes], marker: bytes) -> bytes:
    seen = b""
    loop = asyncio.get_running_loop()
    while marker not in seen:
        line = await loop.run_in_executor(None, process.stdout.readline)  # type: ignore[union-attr]
        if not line:
            raise AssertionError(f"launcher exited ({process.poll()}) before: {marker!r}\n{seen!r}")
        seen += line
    for _ in range(4):
        seen += await loop.run_in_executor(None, process.stdout.readline)  # type: ignore[union-attr]
    return seen
