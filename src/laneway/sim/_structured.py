"""Simulated structured outputs: a JSON value that follows the schema a request asked for.

Real models decode under the schema's constraints; the fleet builds an instance of it instead,
with words from the reply sentences for strings and every property of an object filled in. It
reads the JSON Schema keywords that decide a value's shape (`type`, `properties`, `items`,
`enum`, `const`, `anyOf`/`oneOf`, `$ref` within the schema, bounds on numbers, lengths and item
counts, common string `format`s) and Gemini's upper-case type names.
"""

from __future__ import annotations

import math
import random
from typing import Any

# `{"type": "json_object"}` asks for some JSON object; this is the fleet's schema for it.
ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_DEPTH = 6  # past this depth, objects come out empty and arrays with no items (recursive schemas)
_FORMATS = {"date-time": "2026-01-15T09:30:00Z", "date": "2026-01-15", "time": "09:30:00",
            "email": "customer@example.com", "uri": "https://example.com/help", "uuid":
            "5f0c6f3e-7f2c-4b7e-9d55-2b8f4c1f0a3e"}


def instance(schema: dict[str, Any], rng: random.Random, sentences: tuple[str, ...]) -> Any:
    """A value that follows `schema` (a JSON Schema, or a Gemini `responseSchema`)."""
    return _value(schema, schema, rng, sentences, 0)


def _value(schema: Any, root: dict[str, Any], rng: random.Random, sentences: tuple[str, ...], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 2 * MAX_DEPTH:  # a `$ref` that leads back to itself
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _value(_resolve(ref, root), root, rng, sentences, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if not (isinstance(o, dict) and _type(o) == "null")]
            return _value(rng.choice(typed or options), root, rng, sentences, depth + 1)
    kind = _type(schema)
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, root, rng, sentences, depth)
    if kind == "array":
        return _array(schema, root, rng, sentences, depth)
    if kind == "integer":
        low, high = _bounds(schema, 1, 5, step=1)
        return rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
    if kind == "number":
        low, high = _bounds(schema, 1, 100, step=0.01)
        return min(high, max(low, round(rng.uniform(low, high), 2)))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng, sentences)


def _object(schema: dict[str, Any], root: dict[str, Any], rng: random.Random, sentences: tuple[str, ...],
            depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return {} if depth else {"reply": _string({}, rng, sentences)}
    if depth >= MAX_DEPTH:
        return {}
    return {name: _value(sub, root, rng, sentences, depth + 1) for name, sub in properties.items()}


def _array(schema: dict[str, Any], root: dict[str, Any], rng: random.Random, sentences: tuple[str, ...],
           depth: int) -> list[Any]:
    low = int(schema.get("minItems") or 0)
    high = int(schema.get("maxItems") or max(low, 3))
    count = 0 if depth >= MAX_DEPTH else rng.randint(max(low, min(1, high)), max(low, min(high, 3)))
    items = schema.get("items")
    return [_value(items, root, rng, sentences, depth + 1) for _ in range(count)]


def _string(schema: dict[str, Any], rng: random.Random, sentences: tuple[str, ...]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    text = rng.choice(sentences)
    limit = schema.get("maxLength")
    return text[:limit] if isinstance(limit, int) and limit >= 0 else text


def _type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    return str(kind).lower() if kind is not None else None  # Gemini writes "STRING", "OBJECT", ...


def _bounds(schema: dict[str, Any], low: float, high: float, step: float) -> tuple[float, float]:
    """The range to draw from: the schema's bounds (an exclusive one moved in by `step`), else `low`-`high`."""
    lower, upper = _bound(schema, "minimum", step), _bound(schema, "maximum", -step)
    if lower is None:
        lower = low if upper is None else min(low, upper)
    if upper is None:
        upper = max(lower, high)
    return lower, max(lower, upper)


def _bound(schema: dict[str, Any], name: str, step: float) -> float | None:
    value = schema.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    value = schema.get("exclusive" + name.title())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value + step
    return None


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    """`#/$defs/Name` (or `#/definitions/Name`, or `#` itself) within the root schema; None otherwise."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        node = node.get(part) if isinstance(node, dict) else None
    return node
