"""After a crash: how soon a restarted metering decides authorizations, and how soon its
consumer groups are back. The previous process is killed (SIGKILL), so its group membership
lingers until the session timeout: that, not the service, bounds the groups' return. The
baseline is the same service's first start, with no stale member."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import httpx

from services.metering.app import SERVICE
from services.metering.settings import DEV_API_TOKEN
from shared.db import apply_migrations
from shared.topics import ensure_topics

from .metering import MeteringProcess

AUTH = {"Authorization": f"Bearer {DEV_API_TOKEN}"}


async def _timeline(process: MeteringProcess) -> dict[str, float]:
    """Seconds from spawning the process to: the first authorization answered, and every
    consumer group joined."""
    started = time.perf_counter()
    process.spawn()
    decided = joined = None
    body = {"organisation_id": "org_restart", "member_id": "m", "message_id": "msg"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{process.port}", headers=AUTH, timeout=1
    ) as client:
        while joined is None or decided is None:
            if time.perf_counter() - started > 120:
                raise RuntimeError("metering did not come back within 120 s")
            try:
                if decided is None:
                    body["message_id"] = f"msg_{uuid.uuid4().hex}"
                    if (await client.post("/v1/authorizations", json=body)).status_code == 200:
                        decided = time.perf_counter() - started
                consumers = (await client.get("/readyz")).json()["consumers"].values()
                if joined is None and all(c["state"] == "running" for c in consumers):
                    joined = time.perf_counter() - started
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.01)
    return {"first_authorization_s": round(decided, 2), "groups_joined_s": round(joined, 2)}


async def after_a_crash(bootstrap: str, database_url: str, session_ms: int) -> dict[str, Any]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(bootstrap, prefix)
    await apply_migrations(database_url, schema, SERVICE.all_migrations)
    process = MeteringProcess(
        bootstrap, database_url, schema, prefix, extra={"KAFKA_SESSION_TIMEOUT_MS": str(session_ms)}
    )
    try:
        first = await _timeline(process)
        assert process.process is not None
        process.process.send_signal(signal.SIGKILL)
        process.process.wait()
        again = await _timeline(process)
    finally:
        if process.process is not None and process.process.poll() is None:
            process.process.send_signal(signal.SIGTERM)
            process.process.wait(timeout=30)
    return {"session_timeout_ms": session_ms, "first_start": first, "after_sigkill": again}
