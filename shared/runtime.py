"""Process-level tuning for the services."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Raise the young-generation threshold and freeze what start-up allocated.

    Decoding a batch creates tens of thousands of small objects; with the default thresholds the
    cyclic collector runs hundreds of times per batch, and its full collections (each over every
    live object, ~200 ms here with a batch in flight) stall the event loop. Objects of the hot
    path die by reference counting; full collections are kept for the rare cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1_000)
