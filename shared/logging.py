"""structlog, JSON lines on stdout, for our code and for the libraries underneath.

Per-message context (organisation, event id, topic, partition, offset) is bound with
`structlog.contextvars.bound_contextvars` where a message is handled; every line logged inside
carries it. Values that look like secrets are masked before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog

_SECRET_KEYS = re.compile(
    r"(password|passwd|secret|token|authorization|api_key|apikey|dsn|database_url)", re.I
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
MASK = "***"


def mask_secrets(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if _SECRET_KEYS.search(key):
            event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = mask_secrets(value)
    return event_dict


def _render(_: Any, __: str, event_dict: dict[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def configure_logging(level: str = "INFO", *, service: str) -> None:
    """Route structlog and the standard library (uvicorn, aiokafka, faststream) to JSON lines."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact,
    ]
    structlog.configure(
        # Drop a line below the level before any processor runs: on hot paths an info line
        # that nobody reads would otherwise cost its whole formatting.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            _render,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faststream", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _add_service(service: str):
    def processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
