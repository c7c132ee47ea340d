"""A stop is bounded: a part that does not give up (a broker call that never answers, a task
that ignores cancellation) delays it, it never blocks it."""

from __future__ import annotations

import asyncio
import os
from unittest import mock

import pytest

from services.metering.app import SERVICE
from services.metering.settings import MeteringSettings
from shared import service as kernel_module
from shared.clock import SystemClock
from shared.service import Kernel


async def test_a_stop_ends_even_when_a_part_never_does(
    metering_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_module, "STOP_STEP_SECONDS", 0.5)
    with mock.patch.dict(os.environ, metering_env):
        settings = MeteringSettings()
    kernel = await Kernel.start(SERVICE, settings, SystemClock())
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # ignores being cancelled

    async def never_answers() -> None:
        await release.wait()

    kernel._spawn("stubborn", stubborn)
    kernel.on_stop(never_answers)
    try:
        await asyncio.wait_for(kernel.stop(), 30)  # without the bounds: forever
    finally:
        release.set()
        await asyncio.sleep(0)
