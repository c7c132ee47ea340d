"""The services. `LOCAL` lists how `make run` starts each one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalService:
    name: str
    module: str
    port_variable: str
    port: int


LOCAL: tuple[LocalService, ...] = (
    LocalService("metering", "services.metering", "METERING_HTTP_PORT", 8081),
)
