"""A lean HTTP/1.1 load generator on asyncio streams, with keep-alive connections: light enough
that the caller does not eat the CPU it measures. Latency is taken from the caller's side."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished - self.started


async def paced(rate: float, count: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    """`call(n)` for each n < `count` at a steady `rate`, each in its own task whatever the
    others' answers (open loop). Returns each call's latency in ms, from when it was due."""
    waits: list[float] = []

    async def one(n: int, scheduled: float) -> None:
        await call(n)
        waits.append((time.perf_counter() - scheduled) * 1000)

    tasks = []
    started = time.perf_counter()
    for n in range(count):
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    return waits


def latencies(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    """p50, p99 and max of latencies in milliseconds: the one definition every suite uses
    (the value at rank `int(n * p)` of the sorted values)."""
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], digits)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], digits)}


@contextlib.contextmanager
def _undisturbed_caller():
    """While it times answers, the caller must not pause to collect garbage, and (when allowed)
    runs at a higher scheduling priority: it shares two cores with what it measures, and its own
    scheduling delays are not the service's latency. Processes already started (services,
    broker, database) keep theirs."""
    gc.collect()
    gc.disable()
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, before - 10)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, before)
        gc.enable()


def request_bytes(path: str, token: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def closed_loop(
    host: str, port: int, requests: Iterator[bytes], *, connections: int
) -> Outcome:
    """`connections` callers, each sending its next request as soon as the last is answered."""
    outcome = Outcome()

    async def caller() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for request in requests:
                sent = time.perf_counter()
                status, body = await _exchange(reader, writer, request)
                outcome.latencies_ms.append((time.perf_counter() - sent) * 1000)
                if status == 200:
                    outcome.bodies.append(orjson.loads(body))
                else:
                    outcome.errors += 1
        finally:
            writer.close()

    with _undisturbed_caller():
        outcome.started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(connections)))
        outcome.finished = time.perf_counter()
    return outcome


async def open_loop(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    rate: int,
    seconds: float,
    connections: int = 64,
) -> Outcome:
    """Requests sent at a steady `rate`, whatever the answers (each in its own task, so a slow
    answer does not hold back the next request). Latency counts from when the request is ready
    to go, including any wait for a free connection."""
    outcome = Outcome()
    total = int(rate * seconds)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))

    async def one(n: int) -> None:
        request = make_request(n)
        ready = time.perf_counter()
        reader, writer = await pool.get()
        try:
            status, body = await _exchange(reader, writer, request)
        finally:
            pool.put_nowait((reader, writer))
        outcome.latencies_ms.append((time.perf_counter() - ready) * 1000)
        if status == 200:
            outcome.bodies.append(orjson.loads(body))
        else:
            outcome.errors += 1

    tasks = []
    with _undisturbed_caller():
        outcome.started = time.perf_counter()
        for n in range(total):
            scheduled = outcome.started + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
        outcome.finished = time.perf_counter()
    while not pool.empty():
        pool.get_nowait()[1].close()
    return outcome
