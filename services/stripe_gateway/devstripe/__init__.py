"""devstripe: the part of Stripe this project uses, in memory, on a clock that can be moved
(see `app` and `core`). `Devstripe` runs it in its own process, for `make run` and the
tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from shared.devstack.processes import free_port, spawn, wait_for_port


class Devstripe:
    """devstripe in its own process, on `port`."""

    def __init__(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        retry_seconds: float = 1.0,
        retry_attempts: int = 12,
        frozen_clock: bool = False,
    ):
        self.frozen_clock = frozen_clock
        self.host = host
        self.port = port
        self.log_file = log_file
        self.retry_seconds = retry_seconds
        self.retry_attempts = retry_attempts
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._process = spawn(
            [
                sys.executable,
                "-m",
                "services.stripe_gateway.devstripe",
                "--port",
                str(self.port),
                "--retry-seconds",
                str(self.retry_seconds),
                "--retry-attempts",
                str(self.retry_attempts),
                *(["--frozen-clock"] if self.frozen_clock else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.host, self.port, timeout=30, process=self._process)
        return self.url

    def register_webhook(self, name: str, url: str, secret: str, **disorder: float | int) -> None:
        """`disorder`: `duplicate` (probability), `max_delay` (seconds), `seed`."""
        form = {"url": url, "secret": secret, **{k: str(v) for k, v in disorder.items()}}
        httpx.post(f"{self.url}/_config/webhooks/{name}", data=form)

    def clock(self) -> dict[str, str | None]:
        """Its clock's now, and when something next falls due there."""
        return httpx.get(f"{self.url}/_devstripe/clock").json()

    def move_clock(self, to: str) -> dict[str, object]:
        """Move its clock forward to `to` (ISO 8601), running what falls due on the way."""
        response = httpx.post(f"{self.url}/_devstripe/clock", json={"to": to}, timeout=120)
        response.raise_for_status()
        return response.json()

    def deliveries(self) -> dict[str, int]:
        """Deliveries still on their way, per endpoint."""
        return httpx.get(f"{self.url}/_devstripe/deliveries").json()

    def unregister_webhook(self, name: str) -> None:
        httpx.delete(f"{self.url}/_config/webhooks/{name}")

    def stop(self) -> None:
        """Stop devstripe (and whatever it started: its process group)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue


__all__ = ["Devstripe", "free_port"]
