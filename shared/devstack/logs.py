"""`make run`'s terminal: every service's JSON log lines made readable, one service per colour,
each line prefixed with the service's name. The services log JSON as in production; only this
launcher changes how a person sees it."""

from __future__ import annotations

import os
import sys
import threading
from typing import IO

import orjson

_COLOURS = (36, 35, 33, 32, 34, 96, 95, 93)
_LEVELS = {"warning": 33, "error": 31, "critical": 31, "exception": 31}
_HIDDEN = {"timestamp", "level", "service", "logger", "event"}
_WRITING = threading.Lock()


def use_colour(stream: IO[str]) -> bool:
    """Colour on a terminal, unless NO_COLOR (https://no-color.org); FORCE_COLOR forces it."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or stream.isatty()


def _paint(text: str, code: int | None, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def readable(line: str, name: str, *, width: int, code: int, colour: bool) -> str:
    """One line as a person reads it: `name | 10:04:05 warning  event key=value …`. A line
    that is not a JSON object (a traceback, a print) keeps its text."""
    prefix = _paint(f"{name:<{width}} |", code, colour)
    text = line.rstrip("\n")
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return f"{prefix} {text}"
    if not isinstance(record, dict):
        return f"{prefix} {text}"
    time = str(record.get("timestamp", ""))[11:19]
    level = str(record.get("level", "info"))
    fields = " ".join(f"{k}={v}" for k, v in record.items() if k not in _HIDDEN)
    level_text = _paint(f"{level:<8}", _LEVELS.get(level), colour)
    return f"{prefix} {time} {level_text} {record.get('event', '')}  {fields}".rstrip()


def colour_of(index: int) -> int:
    return _COLOURS[index % len(_COLOURS)]


def pump(source: IO[bytes], name: str, *, width: int, code: int) -> threading.Thread:
    """Copy `source` (a child's output) to stdout, line by line, readable, until it closes."""
    out = sys.stdout
    colour = use_colour(out)

    def run() -> None:
        for raw in iter(source.readline, b""):
            line = raw.decode(errors="replace")
            text = readable(line, name, width=width, code=code, colour=colour)
            with _WRITING:
                out.write(text + "\n")
                out.flush()

    thread = threading.Thread(target=run, name=f"logs-{name}", daemon=True)
    thread.start()
    return thread
