"""Example payloads, one per event type (`<type>.json`). Producers and consumers are tested
against them; other teams can copy them."""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).parent


def example(type_name: str) -> bytes:
    return (DIRECTORY / f"{type_name}.json").read_bytes()
