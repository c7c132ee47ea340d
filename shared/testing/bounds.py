"""What a JSON schema leaves unbounded: for tests that every number, string and list a
service accepts fits what its store can hold (event schemas, request models)."""

from __future__ import annotations

INT64 = 2**63


def unbounded(schema: dict, defs: dict, path: str) -> list[str]:
    """Numbers, strings and lists of a JSON schema without a bound a store can hold."""
    if "$ref" in schema:
        return unbounded(defs[schema["$ref"].split("/")[-1]], defs, path)
    found = [
        p
        for key in ("anyOf", "oneOf", "allOf")
        for s in schema.get(key, ())
        for p in unbounded(s, defs, path)
    ]
    kind = schema.get("type")
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is None or high is None or low < -INT64 or high > INT64 - 1:
            found.append(f"{path}: integer [{low}, {high}]")
    elif kind == "string":
        if not ({"maxLength", "enum", "const"} & schema.keys()) and schema.get("format") not in {
            "date-time",
            "uuid",
        }:
            found.append(f"{path}: string without a maximum length")
    elif kind == "object":
        for name, sub in schema.get("properties", {}).items():
            found += unbounded(sub, defs, f"{path}.{name}")
        for pattern, sub in schema.get("patternProperties", {}).items():
            if "maxProperties" not in schema:
                found.append(f"{path}: object without a maximum size")
            found += unbounded(sub, defs, f"{path}[{pattern}]")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in schema:
                found.append(f"{path}: object without a maximum size")
            found += unbounded(extra, defs, f"{path}.*")
            found += unbounded(schema.get("propertyNames", {"maxLength": 0}), defs, f"{path}[key]")
    elif kind == "array":
        if "maxItems" not in schema:
            found.append(f"{path}: list without a maximum length")
        found += unbounded(schema.get("items", {}), defs, f"{path}[]")
    return found
