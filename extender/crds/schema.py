"""A pydantic model's JSON schema as a structural OpenAPI v3 schema, as the API server
requires of a CRD: references inlined, no ``anyOf`` but the int-or-string one, titles
dropped. A model's defaults become the schema's, so the API server fills them in (and
``kubectl get`` shows them); an optional field without one is left out, never null.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DROPPED = frozenset({"title", "$defs"})


class SchemaError(ValueError):
    """A model whose schema has no structural form; the message names the union."""


def _union(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in schema["anyOf"] if o.get("type") != "null"]
    if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    elif len(options) == 1:
        # optional, never null: whoever writes the object leaves unset fields out
        out = structural(options[0], defs)
    else:
        raise SchemaError(
            f"no structural form for the union {schema}: give the field one type, or an "
            "object with one field per form and a CEL rule for exactly one"
        )
    for key in ("description", "default"):
        if schema.get(key) is not None:
            out[key] = structural({key: schema[key]}, defs)[key]
    return out


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with references to ``defs`` inlined, ``anyOf [X, null]`` as ``X``,
    ``anyOf [string, integer]`` as int-or-string, ``const`` as a one-value ``enum``, an
    exclusive minimum in the OpenAPI v3.0 form; ``additionalProperties: false`` (pydantic's
    ``extra="forbid"``) dropped, as the API server prunes unknown fields anyway."""
    if "$ref" in schema:
        return structural(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return _union(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {k: structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
        elif key == "description":
            # one paragraph: docstrings wrap lines and quote names as ``this``
            out[key] = " ".join(str(value).replace("``", "").split())
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        else:
            out[key] = value
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model`` (by alias, as the objects are written)."""
    raw = model.model_json_schema(by_alias=True)
    return structural(raw, raw.get("$defs", {}))
