"""devstripe: localstripe plus Checkout, the Billing Portal and the webhooks it lacks
(see `app`). `Devstripe` runs both processes, for `make run` and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from shared.devstack.processes import free_port, wait_for_port


class Devstripe:
    """localstripe on a free port, fronted by the devstripe app on `port`."""

    def __init__(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        retry_seconds: float = 1.0,
        retry_attempts: int = 12,
    ):
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
        self._process = subprocess.Popen(
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
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.host, self.port, timeout=30, process=self._process)
        return self.url

    def register_webhook(self, name: str, url: str, secret: str, **disorder: float | int) -> None:
        """`disorder`: `duplicate` (probability), `max_delay` (seconds), `seed`."""
        form = {"url": url, "secret": secret, **{k: str(v) for k, v in disorder.items()}}
        httpx.post(f"{self.url}/_config/webhooks/{name}", data=form)

    def deliveries(self) -> dict[str, int]:
        """Deliveries still on their way, per endpoint."""
        return httpx.get(f"{self.url}/_devstripe/deliveries").json()

    def unregister_webhook(self, name: str) -> None:
        httpx.delete(f"{self.url}/_config/webhooks/{name}")

    def stop(self) -> None:
        """Stop devstripe and its localstripe (they share a process group)."""
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
