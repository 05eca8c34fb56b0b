"""The wire protocol of kube-scheduler extenders: ``k8s.io/kube-scheduler/extender/v1``.

The Go types carry no JSON tags, so their keys are the Go field names (``Pod``,
``NodeNames``, ``FailedNodes`` …). The scheduler's decoder, Go's ``encoding/json``,
matches keys to fields case-insensitively and ignores unknown keys; :func:`parse`
does the same, so ``{"pod": …, "nodenames": […]}`` is read like the canonical form.
Embedded Kubernetes objects (``v1.Pod``, ``v1.Node``) stay raw dicts: the extender
reads a handful of their fields and modelling all of them would cost time per request.

Inputs are parsed from bytes with :func:`parse` (orjson, then pydantic); a malformed
body raises :class:`ProtocolError` whose message names the offending field, and a body
with more candidates than the caller allows raises :class:`RequestTooLarge`, naming the
field and the limit, before any model is built.
Outputs are encoded with :func:`encode` / the ``to_json`` methods, always with the
exact Go field names, every field present (``null`` for a nil pointer), as Go emits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from extender.cluster.raw import ProtocolError, get_field

MIN_EXTENDER_PRIORITY = 0
MAX_EXTENDER_PRIORITY = 10


def _fold_keys(data: Any, canonical: Mapping[str, str]) -> Any:
    """Rename keys matching a field case-insensitively to the field's Go name.

    Go prefers an exact match and falls back to a case-insensitive one; later keys
    overwrite earlier ones that land on the same field. Unknown keys are dropped,
    as Go ignores them.
    """
    if not isinstance(data, Mapping):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            continue
        name = canonical.get(key) or canonical.get(key.lower())
        if name is not None:
            out[name] = value
    return out


class GoStruct(BaseModel):
    """Base of the wire models: Go field names as aliases, any key case accepted."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _case_insensitive_keys(cls, data: Any) -> Any:
        canonical = _CANONICAL.get(cls)
        if canonical is None:
            canonical = {}
            for name, info in cls.model_fields.items():
                alias = info.alias or name
                canonical[alias] = alias
                canonical[alias.lower()] = alias
                canonical[name] = alias  # constructing by Python name in code
            _CANONICAL[cls] = canonical
        return _fold_keys(data, canonical)


# Go name and lower-cased Go name → Go name, per model class, built on first use.
_CANONICAL: dict[type[BaseModel], dict[str, str]] = {}


class NodeList(GoStruct):
    """``v1.NodeList``. Unlike the extender types it has JSON tags: ``items``, ``metadata``."""

    items: list[dict[str, Any]] | None = Field(default=None, alias="items")
    metadata: dict[str, Any] | None = Field(default=None, alias="metadata")

    def names(self) -> list[str]:
        """``metadata.name`` of every item, in order; raises :class:`ProtocolError`."""
        out: list[str] = []
        for i, node in enumerate(self.items or ()):
            meta = get_field(node, "metadata")
            name = get_field(meta, "name") if isinstance(meta, Mapping) else None
            if not isinstance(name, str) or not name:
                raise ProtocolError(
                    f"Nodes.items[{i}].metadata.name: missing; every node needs a name"
                )
            out.append(name)
        return out


class ExtenderArgs(GoStruct):
    """Body of ``/filter`` and ``/prioritize``.

    With ``nodeCacheCapable: true`` the scheduler sends ``NodeNames`` and ``Nodes`` is
    null; otherwise it sends full node objects in ``Nodes.items``.
    """

    pod: dict[str, Any] = Field(alias="Pod")
    nodes: NodeList | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames")

    @model_validator(mode="after")
    def _some_nodes(self) -> ExtenderArgs:
        if self.nodes is None and self.node_names is None:
            raise ValueError(
                "NodeNames or Nodes.items: one is required (a nodeCacheCapable scheduler "
                "sends NodeNames, others Nodes.items)"
            )
        return self

    @property
    def names_only(self) -> bool:
        """True when the candidates came as ``NodeNames`` (answer in kind)."""
        return self.node_names is not None

    def candidate_names(self) -> list[str]:
        """The candidate node names, whichever form they came in."""
        if self.node_names is not None:
            return self.node_names
        assert self.nodes is not None
        return self.nodes.names()


class ExtenderFilterResult(GoStruct):
    """Answer of ``/filter``. Failed nodes map node name → reason; nodes in
    ``FailedAndUnresolvableNodes`` are ones preemption cannot help."""

    nodes: NodeList | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames")
    failed_nodes: dict[str, str] = Field(default_factory=dict, alias="FailedNodes")
    failed_and_unresolvable_nodes: dict[str, str] = Field(
        default_factory=dict, alias="FailedAndUnresolvableNodes"
    )
    error: str = Field(default="", alias="Error")

    def to_json(self) -> bytes:
        return encode_filter_result(
            self.node_names,
            None if self.nodes is None else (self.nodes.items or []),
            self.failed_nodes,
            unresolvable=self.failed_and_unresolvable_nodes,
            error=self.error,
        )


class HostPriority(GoStruct):
    """One entry of the ``/prioritize`` answer: a node and its 0–10 score."""

    host: str = Field(alias="Host")
    score: int = Field(alias="Score")


class ExtenderBindingArgs(GoStruct):
    """Body of ``/bind``: which pod goes to which node."""

    pod_name: str = Field(alias="PodName", min_length=1)
    pod_namespace: str = Field(alias="PodNamespace", min_length=1)
    pod_uid: str = Field(default="", alias="PodUID")
    node: str = Field(alias="Node", min_length=1)


class ExtenderBindingResult(GoStruct):
    """Answer of ``/bind``; a non-empty ``Error`` makes the scheduler retry the pod."""

    error: str = Field(default="", alias="Error")

    def to_json(self) -> bytes:
        return orjson.dumps({"Error": self.error})


class MetaPod(GoStruct):
    uid: str = Field(alias="UID")


class MetaVictims(GoStruct):
    pods: list[MetaPod] = Field(default_factory=list, alias="Pods")
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations")

    def as_go(self) -> dict[str, Any]:
        return {
            "Pods": [{"UID": p.uid} for p in self.pods],
            "NumPDBViolations": self.num_pdb_violations,
        }


class Victims(GoStruct):
    """Full victim pods, sent when the extender is not node-cache capable."""

    pods: list[dict[str, Any]] = Field(default_factory=list, alias="Pods")
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations")

    def to_meta(self) -> MetaVictims:
        uids: list[MetaPod] = []
        for i, pod in enumerate(self.pods):
            meta = get_field(pod, "metadata")
            uid = get_field(meta, "uid") if isinstance(meta, Mapping) else None
            if not isinstance(uid, str):
                raise ProtocolError(f"Pods[{i}].metadata.uid: missing; victims need a UID")
            uids.append(MetaPod(uid=uid))
        return MetaVictims(pods=uids, num_pdb_violations=self.num_pdb_violations)


class ExtenderPreemptionArgs(GoStruct):
    """Body of ``/preempt``: the pod and, per candidate node, the pods the scheduler
    would evict. Node-cache-capable schedulers send ``NodeNameToMetaVictims`` (UIDs),
    others ``NodeNameToVictims`` (full pods)."""

    pod: dict[str, Any] = Field(alias="Pod")
    node_name_to_victims: dict[str, Victims | None] | None = Field(
        default=None, alias="NodeNameToVictims"
    )
    node_name_to_meta_victims: dict[str, MetaVictims | None] | None = Field(
        default=None, alias="NodeNameToMetaVictims"
    )

    def meta_victims(self) -> dict[str, MetaVictims]:
        """Victims per node as UIDs, whichever form they came in."""
        if self.node_name_to_meta_victims is not None:
            return {n: v or MetaVictims() for n, v in self.node_name_to_meta_victims.items()}
        out: dict[str, MetaVictims] = {}
        for node, victims in (self.node_name_to_victims or {}).items():
            try:
                out[node] = victims.to_meta() if victims is not None else MetaVictims()
            except ProtocolError as exc:
                raise ProtocolError(f"NodeNameToVictims.{node}.{exc}") from exc
        return out


class ExtenderPreemptionResult(GoStruct):
    """Answer of ``/preempt``: always UIDs, whichever form the request used."""

    node_name_to_meta_victims: dict[str, MetaVictims] = Field(
        default_factory=dict, alias="NodeNameToMetaVictims"
    )

    def to_json(self) -> bytes:
        victims = self.node_name_to_meta_victims
        return orjson.dumps({"NodeNameToMetaVictims": {n: v.as_go() for n, v in victims.items()}})


M = TypeVar("M", bound=BaseModel)

# At most this many problems are spelled out in a ProtocolError; a body with 20,000 bad
# entries gets the first few and a count, not a message as large as the body.
MAX_PROBLEMS = 5


class RequestTooLarge(ProtocolError):
    """A request with more entries in ``field`` than the caller's limit allows.

    ``str()`` names the field, the count and the limit."""

    def __init__(self, field: str, count: int, limit: int) -> None:
        super().__init__(f"{field}: {count:,} entries, over the limit of {limit:,}")
        self.field = field
        self.count = count
        self.limit = limit


def _keyed(data: Mapping[str, Any], name: str) -> list[tuple[str, Any]]:
    """Every ``(key, value)`` of ``data`` whose key is ``name`` in any case: Go keeps the
    last of them, so a limit must hold for each one, not only the exact match."""
    lowered = name.lower()
    return [(k, v) for k, v in data.items() if isinstance(k, str) and k.lower() == lowered]


def _check_candidates(data: Mapping[str, Any], limit: int) -> None:
    """Raise :class:`RequestTooLarge` when a list the extender walks per candidate is
    longer than ``limit``: ``NodeNames``, ``Nodes.items``, the node maps of ``/preempt``
    and the victims in them (all victims together)."""
    for key, value in _keyed(data, "NodeNames"):
        if isinstance(value, list):
            if len(value) > limit:
                raise RequestTooLarge(key, len(value), limit)
            # A list of 20,000 non-strings would cost pydantic 20,000 error objects;
            # the first one is enough to refuse it. Checked in C first (a valid list
            # is the common case), then found by position.
            if not all(map(str.__instancecheck__, value)):
                i, name = next((i, n) for i, n in enumerate(value) if not isinstance(n, str))
                raise ProtocolError(
                    f"{key}[{i}]: expected a node name (string), got {type(name).__name__}"
                )
    for key, nodes in _keyed(data, "Nodes"):
        if isinstance(nodes, Mapping):
            for items_key, items in _keyed(nodes, "items"):
                if isinstance(items, list) and len(items) > limit:
                    raise RequestTooLarge(f"{key}.{items_key}", len(items), limit)
    for field in ("NodeNameToVictims", "NodeNameToMetaVictims"):
        for key, per_node in _keyed(data, field):
            if not isinstance(per_node, Mapping):
                continue
            if len(per_node) > limit:
                raise RequestTooLarge(key, len(per_node), limit)
            victims = 0
            for entry in per_node.values():
                if isinstance(entry, Mapping):
                    victims += sum(len(v) for _, v in _keyed(entry, "Pods") if isinstance(v, list))
            if victims > limit:
                raise RequestTooLarge(f"{key}.*.Pods", victims, limit)


def _format_loc(loc: Sequence[int | str]) -> str:
    # pydantic reports fields by alias (the Go name); list indices become [i].
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def parse(body: bytes, model: type[M], *, max_candidates: int | None = None) -> M:
    """Decode a request body into ``model``.

    Raises :class:`ProtocolError` naming the field (the first :data:`MAX_PROBLEMS`
    problems and a count of the rest), and :class:`RequestTooLarge` when
    ``max_candidates`` is given and a candidate list is longer (checked on the decoded
    JSON, before the model is built)."""
    if not body:
        raise ProtocolError(f"empty body; expected a JSON {model.__name__}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"body must be a JSON object ({model.__name__})")
    if max_candidates is not None:
        _check_candidates(data, max_candidates)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = []
        for err in errors[:MAX_PROBLEMS]:
            msg = "required field is missing" if err["type"] == "missing" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            if not err["loc"]:  # a whole-object check; its message names the fields
                problems.append(msg)
                continue
            problems.append(f"{_format_loc(err['loc'])}: {msg}")
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"and {len(errors) - MAX_PROBLEMS:,} more")
        raise ProtocolError("; ".join(problems)) from exc


def encode_filter_result(
    node_names: Sequence[str] | None,
    nodes: Sequence[Mapping[str, Any]] | None,
    failed: Mapping[str, str],
    *,
    unresolvable: Mapping[str, str],
    error: str = "",
) -> bytes:
    """``ExtenderFilterResult`` as the scheduler reads it; pass ``node_names`` for
    node-cache-capable requests and ``nodes`` (the raw node objects) otherwise."""
    return orjson.dumps(
        {
            "Nodes": None if nodes is None else {"metadata": {}, "items": list(nodes)},
            "NodeNames": None if node_names is None else list(node_names),
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": error,
        }
    )


def encode_host_priorities(
    hosts: Sequence[str],
    scores: Sequence[int] | NDArray[np.int64],
    omit_zero: bool = True,
    *,
    relative: bool = False,
) -> bytes:
    """A ``HostPriorityList``: ``[{"Host": …, "Score": …}, …]``, grouped by score (the
    highest first; the request's order within a score): kube-scheduler adds each entry's
    score to its host, so the order carries nothing.

    Zero scores are left out unless ``omit_zero`` is false: kube-scheduler adds an
    extender's score to the hosts it lists and nothing to the others, so a missing host
    scores 0 either way — and on a 1,000-node cluster the list, built and sent per pod,
    shrinks to the nodes the extender actually prefers. Each group is encoded as one
    list of names, not a dict per host, so 20,000 hosts cost a few passes in C.

    ``relative``: every score lowered by the lowest, so the hosts that score lowest are
    left out too. kube-scheduler adds the scores to the hosts it asked about, all of them
    candidates of the same pod, so taking the same amount off every host changes no
    ranking and no tie; what it saves is decoding those entries (by reflection, per pod)."""
    values = np.asarray(scores, dtype=np.int64)
    if values.shape != (len(hosts),):
        raise ValueError(f"{len(hosts)} hosts and {values.size} scores")
    if relative and values.size:
        values = values - values.min()
    groups: list[bytes] = []
    for score in np.unique(values)[::-1].tolist():
        if score == 0 and omit_zero:
            continue
        positions = np.flatnonzero(values == score).tolist()
        names = [hosts[positions[0]]] if len(positions) == 1 else itemgetter(*positions)(hosts)
        groups.append(_host_group(list(names), score))
    return b"[" + b",".join(groups) + b"]"


def _host_group(names: list[str], score: int) -> bytes:
    """``{"Host":name,"Score":score}`` for every name, comma-separated."""
    listed = orjson.dumps(names)
    if b"\\" in listed:  # an escape: a quote may sit inside a name; the slow, exact way
        return orjson.dumps([{"Host": h, "Score": score} for h in names])[1:-1]
    # Without escapes every quote delimits a name, so '","' only separates two of them.
    tail = b'","Score":%d}' % score
    return b'{"Host":"' + listed[2:-2].replace(b'","', tail + b',{"Host":"') + tail


def encode(model: BaseModel) -> bytes:
    """Any wire model with its Go field names (for the models without ``to_json``)."""
    return orjson.dumps(model.model_dump(by_alias=True))
