"""A service in its own process, as in production, for the benchmarks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx

from shared.devstack import free_port


class ServiceProcess:
    """`python -m <module>` with its own schema and topic prefix; ready once its consumer
    groups have joined (timings start with consuming)."""

    def __init__(
        self,
        module: str,
        env_prefix: str,
        bootstrap: str,
        database_url: str,
        schema: str,
        prefix: str,
        *,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "TOPIC_PREFIX": prefix,
            f"{env_prefix}DB_SCHEMA": schema,
            f"{env_prefix}HTTP_PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            **(extra or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        log = os.environ.get("BENCH_SERVICE_LOG")  # keep the service's log, for diagnosis
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=open(log, "ab") if log else subprocess.DEVNULL,
        )

    async def __aenter__(self) -> ServiceProcess:
        self.spawn()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    consumers = response.json().get("consumers", {}).values()
                    if response.status_code == 200 and all(
                        c["state"] == "running" for c in consumers
                    ):
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.module} did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)
