"""A service in its own process, as in production, for the benchmarks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx

from shared.devstack import free_port

PEAKS: dict[str, list[float]] = {}
"""Peak resident memory (MiB) of every service process a benchmark ran, by module."""


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

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (Linux `VmHWM`), in MiB."""
        if self.process is None:
            return None
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        PEAKS.setdefault(self.module, []).append(self.peak_rss_mb() or 0.0)
        self.process.terminate()
        self.process.wait(timeout=30)


def stack_peaks() -> dict[str, float]:
    """Peak resident memory (MiB) of the broker and of the largest PostgreSQL process now
    running on this machine (the benchmark's own stack)."""
    found: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/status") as f:
                peak = next((int(x.split()[1]) for x in f if x.startswith("VmHWM:")), 0)
        except OSError:
            continue
        name = (
            "broker (Tansu)"
            if "tansu" in command
            else "PostgreSQL (largest process)"
            if "postgres" in command
            else None
        )
        if name is not None:
            found[name] = max(found.get(name, 0.0), round(peak / 1024, 1))
    return found
