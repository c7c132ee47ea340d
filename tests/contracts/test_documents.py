"""The contracts: the committed AsyncAPI and OpenAPI documents are what the code renders, and
the registry's producers and consumers are what the code publishes and consumes."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import contracts, topics
from shared.events.codec import TopicCodec
from shared.events.examples import example
from shared.service import registered
from shared.topics import EXTERNAL_PARTIES, REGISTRY, TopicSpec

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {service.name: service for service in registered()}
CLI = "billing CLI"
SPEC_NAMES = {name for name, value in vars(topics).items() if isinstance(value, TopicSpec)}
TOPIC_OF = {schema.__name__: spec for spec in REGISTRY for schema in spec.schemas}


def _names(paths: list[Path]) -> set[str]:
    """Every name a module's code mentions (names, attributes, imports)."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.alias):
                found.add(node.asname or node.name)
    return found


def _package(party: str) -> Path:
    if party == CLI:
        return ROOT / "shared" / "cli"
    return ROOT / Path(*SERVICES[party].module.split("."))


def _consumed(party: str) -> set[str]:
    """The topics a service consumes: the registry entries its wiring (`app.py`) names."""
    if party == CLI:
        return set()
    wiring = _names([_package(party) / "app.py"]) & SPEC_NAMES
    return {getattr(topics, name).name for name in wiring}


def _mentioned_types(party: str) -> set[str]:
    files = sorted(_package(party).rglob("*.py"))
    if party in SERVICES and SERVICES[party].audit:
        files.append(ROOT / "shared" / "audit.py")
    return _names(files) & set(TOPIC_OF)


def _published(party: str) -> set[str]:
    """The event types a party's code names on topics it does not consume: what it writes."""
    consumed = _consumed(party)
    return {t for t in _mentioned_types(party) if TOPIC_OF[t].name not in consumed}


OURS = [*SERVICES, CLI]


def test_the_committed_documents_are_what_the_code_renders() -> None:
    assert contracts.drift() == [], "run `make contracts` and commit docs/"


def test_every_party_named_in_the_registry_is_ours_or_a_declared_other_team() -> None:
    for spec in REGISTRY:
        assert spec.producers and spec.consumers, spec.name
        for party in (*spec.producers, *spec.consumers):
            assert party in OURS or party in EXTERNAL_PARTIES, (spec.name, party)


@pytest.mark.parametrize("party", OURS)
def test_the_registry_lists_exactly_the_topics_a_service_consumes(party: str) -> None:
    declared = {spec.name for spec in REGISTRY if party in spec.consumers}
    assert _consumed(party) == declared


@pytest.mark.parametrize("party", OURS)
def test_the_registry_lists_exactly_the_topics_our_code_publishes_on(party: str) -> None:
    declared = {spec.name for spec in REGISTRY if party in spec.producers}
    assert {TOPIC_OF[t].name for t in _published(party)} == declared


def test_every_schema_is_published_by_someone_or_declared_retired() -> None:
    published = {t for party in OURS for t in _published(party)}
    for spec in REGISTRY:
        external = any(p in EXTERNAL_PARTIES for p in spec.producers)
        for schema in spec.schemas:
            name = schema.__name__
            if schema in spec.retired:
                assert name not in published, f"{name} is retired yet still published"
            else:
                assert external or name in published, f"{name}: no producer; retire it"


def test_every_topic_still_carries_a_published_schema() -> None:
    for spec in REGISTRY:
        assert spec.published, f"{spec.name}: every schema retired"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_asyncapi_document_is_whole() -> None:
    document = yaml.safe_load(contracts.ASYNCAPI.read_text())
    assert document["asyncapi"] == "3.0.0"
    for ref in _refs(document):
        _resolve(document, ref)
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {n for s in REGISTRY for n in (s.name, s.dead_letter)}
    for operation in document["operations"].values():
        assert operation["action"] in {"send", "receive"}
        assert operation["messages"], operation


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_the_documented_examples_decode_on_their_topic(spec: TopicSpec) -> None:
    document = yaml.safe_load(contracts.ASYNCAPI.read_text())
    codec = TopicCodec(spec.schemas, max_bytes=64 * 1024)
    for schema in spec.schemas:
        message = document["components"]["messages"][schema.__name__]
        payload = message["examples"][0]["payload"]
        assert payload["type"] == schema.type_name
        key = payload["organisation_id"].encode()
        assert isinstance(codec.decode(example(schema.type_name), key), schema)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_documents_its_operations_routes(name: str) -> None:
    document = yaml.safe_load((contracts.OPENAPI / f"{name}.yaml").read_text())
    assert document["openapi"].startswith("3.")
    assert {"/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    for ref in _refs(document):
        _resolve(document, ref)
