"""Process-level tuning and watching for the services."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from shared.logging import get_logger

log = get_logger("shared.runtime")


def tune_gc(young: int = 50_000) -> None:
    """Raise the young-generation threshold and freeze what start-up allocated.

    Decoding a batch creates tens of thousands of small objects; with the default thresholds the
    cyclic collector runs hundreds of times per batch. Objects of the hot path die by reference
    counting, so collections find little; `young` trades how often the collector runs against
    how long each pause is (see `watch_gc_pauses`).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 10, 100)


def watch_gc_pauses(slow_ms: float = 20.0) -> None:
    """Log every collection that pauses the process longer than `slow_ms`."""
    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            return
        paused_ms = (time.perf_counter() - started.get("t", time.perf_counter())) * 1000
        if paused_ms >= slow_ms:
            log.warning(
                "slow garbage collection",
                generation=info["generation"],
                paused_ms=round(paused_ms, 1),
                collected=info["collected"],
            )

    gc.callbacks.append(callback)


async def watch_loop_lag(slow_ms: float = 25.0, every_seconds: float = 0.01) -> None:
    """Log when the event loop answers late: something blocked it (CPU-bound work, a pause)."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(every_seconds)
        lag_ms = (time.perf_counter() - before - every_seconds) * 1000
        if lag_ms >= slow_ms:
            log.warning("event loop blocked", lag_ms=round(lag_ms, 1))
