"""The contracts as documents other teams read: the AsyncAPI 3 document of every topic and
event (from the registry, `shared.topics`) and the OpenAPI document of every service's HTTP API
(from its routes). `make contracts` writes them under `docs/`; a test fails when the code and
the committed documents differ.

`python -m shared.contracts [write|check]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic.json_schema import models_json_schema

from shared.events.examples import example
from shared.service import create_app, registered
from shared.topics import EXTERNAL_PARTIES, REGISTRY, TopicSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ASYNCAPI = DOCS / "asyncapi.yaml"
OPENAPI = DOCS / "openapi"


def _channel_id(spec: TopicSpec) -> str:
    return spec.name.replace(".", "-")


def _operation_id(party: str, action: str, spec: TopicSpec) -> str:
    who = "".join(c if c.isalnum() else "-" for c in party).strip("-")
    return f"{who}.{action}.{_channel_id(spec)}"


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the registry: a channel per topic (and its dead-letter
    topic), a message per event type with its JSON Schema and example, an operation per
    producer (`send`) and consumer (`receive`)."""
    schemas = [schema for spec in REGISTRY for schema in spec.schemas]
    _, definitions = models_json_schema(
        [(schema, "validation") for schema in schemas],
        ref_template="#/components/schemas/{model}",
    )
    components_schemas = dict(sorted(definitions.get("$defs", {}).items()))
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in REGISTRY:
        channel = _channel_id(spec)
        names = []
        for schema in spec.schemas:
            name = schema.__name__
            names.append(name)
            retired = schema in spec.retired
            messages[name] = {
                "name": schema.type_name,
                "title": name,
                "summary": (schema.__doc__ or name).strip().splitlines()[0],
                **(
                    {"description": "Retired: still decoded, no longer published."}
                    if retired
                    else {}
                ),
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": "The organisation id."},
                        "bindingVersion": "0.5.0",
                    }
                },
                "examples": [
                    {"name": schema.type_name, "payload": orjson.loads(example(schema.type_name))}
                ],
                **({"x-retired": True} if retired else {}),
            }
        channels[channel] = {
            "address": spec.name,
            "description": spec.description,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": spec.partitions,
                    "bindingVersion": "0.5.0",
                }
            },
        }
        channels[f"{channel}-dlq"] = {
            "address": spec.dead_letter,
            "description": f"What the consumers of `{spec.name}` refuse: the record as "
            "received, with the reason in its headers.",
            "bindings": {
                "kafka": {"topic": spec.dead_letter, "partitions": 1, "bindingVersion": "0.5.0"}
            },
        }
        published = [s.__name__ for s in spec.published]
        for action, parties, carried in (
            ("send", spec.producers, published),
            ("receive", spec.consumers, names),
        ):
            for party in parties:
                operations[_operation_id(party, action, spec)] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel}"},
                    "summary": f"{party}{' (another team)' if party in EXTERNAL_PARTIES else ''}",
                    "messages": [
                        {"$ref": f"#/channels/{channel}/messages/{name}"} for name in carried
                    ],
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Agent workspace billing: topics and events",
            "version": "1",
            "description": (
                "Every topic is keyed by organisation id, so one organisation's events stay "
                "in order; every event has the envelope `event_id`, `type` (versioned), "
                "`organisation_id`, `occurred_at`, `producer`, `data`. A published schema never "
                "changes: a new version is added. Generated from `shared/topics.py` by "
                "`make contracts`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "Apache Kafka (KRaft); topics may carry a `TOPIC_PREFIX`.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components_schemas},
    }


def openapi(service: Any) -> dict[str, Any]:
    """The OpenAPI document of one service's HTTP API, as FastAPI serves it at /openapi.json."""
    return create_app(service).openapi()


def _yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def rendered() -> dict[Path, str]:
    """Every document, by path, as `make contracts` writes it."""
    documents = {ASYNCAPI: _yaml(asyncapi())}
    for service in registered():
        documents[OPENAPI / f"{service.name}.yaml"] = _yaml(openapi(service))
    return documents


def drift() -> list[str]:
    """The documents that differ from what the code renders (empty: in step)."""
    stale = []
    for path, text in rendered().items():
        if not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(ROOT)))
    known = set(rendered())
    stale += [str(p.relative_to(ROOT)) for p in OPENAPI.glob("*.yaml") if p not in known]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contracts")
    parser.add_argument("command", choices=("write", "check"), nargs="?", default="write")
    args = parser.parse_args(argv)
    if args.command == "check":
        stale = drift()
        for path in stale:
            print(f"out of date: {path} (run `make contracts`)", file=sys.stderr)
        return 1 if stale else 0
    OPENAPI.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
