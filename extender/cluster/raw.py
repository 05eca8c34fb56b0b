"""Raw Kubernetes objects as the API server sends them (parsed JSON, not client models):
the field lookup Go's JSON decoding uses, and the error for an object or body the extender
cannot use. The mirror, the pod readers and the webhook's wire protocol share them."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

RawObject = Mapping[str, Any]


class ProtocolError(ValueError):
    """A request body or object the extender cannot use. ``str()`` names the field and the
    fix."""


def get_field(obj: Mapping[str, Any], name: str) -> Any:
    """``obj[name]`` matched as Go matches a JSON key to a struct field: exactly,
    else case-insensitively. For reading struct fields of raw Kubernetes objects
    (``metadata``, ``spec`` …); map keys such as label names are exact in Go."""
    value = obj.get(name)
    if value is not None or name in obj:
        return value
    lowered = name.lower()
    for key, candidate in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return candidate
    return None


def metadata_of(obj: RawObject) -> Mapping[str, Any]:
    """``obj.metadata``, or an empty mapping when it is missing or not an object."""
    meta = get_field(obj, "metadata")
    return meta if isinstance(meta, Mapping) else {}


def detached(text: str) -> str:
    """An equal string that shares no memory with the decoded object ``text`` came from.

    What the state keeps of a raw object (a pod's UID, name, node …) must not be the
    decoded string itself: one live string keeps its allocator arena — a MiB of the
    decoded list around it — resident, so 100,000 records would hold a whole relist's
    objects (a GiB) in memory after the list is gone."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


def shared(text: str) -> str:
    """:func:`detached`, one copy per distinct value (namespaces, node and service names:
    many pods, few values)."""
    return sys.intern(detached(text))
