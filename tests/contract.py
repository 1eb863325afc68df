"""Checking what the app says and sends against its own OpenAPI document (`GET /openapi.json`)."""
from __future__ import annotations

import re
from functools import lru_cache

from jsonschema import Draft202012Validator

from ingress.openapi import build_document


@lru_cache(maxsize=1)
def _document_of(app_id, app) -> dict:
    return build_document(app)


def document(app) -> dict:
    return _document_of(id(app), app)


def validator(doc: dict, schema: dict) -> Draft202012Validator:
    """A validator for `schema` whose `#/components/…` references resolve inside `doc`."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def schema_errors(doc: dict, schema: dict, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(doc, schema).iter_errors(instance)]


def _template(doc: dict, path: str) -> str | None:
    for template in doc["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    return None


def response_errors(app, method: str, path: str, status: int, body) -> list[str]:
    """What is wrong with one JSON response for its documented schema ([] when it conforms)."""
    doc = document(app)
    template = _template(doc, path)
    if template is None:
        return [f"{method} {path}: not in the document"]
    operation = doc["paths"][template].get(method.lower())
    if operation is None and status == 405:  # a method the path does not take: 405, `Allow` naming those it does
        return []
    if operation is None:
        return [f"{method} {template}: method not in the document"]
    response = operation["responses"].get(str(status)) or operation["responses"].get("default")
    if response is None:
        return [f"{method} {template}: status {status} not documented"]
    schema = ((response.get("content") or {}).get("application/json") or {}).get("schema")
    if schema is None:
        return []
    return [f"{method} {path} {status}: {e}" for e in schema_errors(doc, schema, body)]


def event_errors(app, envelope: dict, kind: str = "OutboundEvent") -> list[str]:
    doc = document(app)
    name = f"{kind}.{envelope.get('type')}"
    if name not in doc["components"]["schemas"]:
        return [f"{name}: no schema"]
    return [f"{name}: {e}" for e in schema_errors(doc, {"$ref": f"#/components/schemas/{name}"}, envelope)]
