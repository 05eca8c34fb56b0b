"""The agent's side of the API: its node's ``NodePowerLimit``, read and watched, and its
``/status`` written. Raw JSON through ``kubernetes.client.CustomObjectsApi``; the object is
selected by name (``metadata.name=<node>``), so the agent never reads another node's
request. The rights this takes are ``get``/``list``/``watch`` on ``nodepowerlimits`` and
``update`` on ``nodepowerlimits/status`` (manifests/agent/rbac.yaml).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson

from extender.agent.resource import GROUP, KIND, PLURAL, VERSION
from extender.cluster.client import DEFAULT_TIMEOUTS, call_timeout, watch_timeout
from extender.cluster.mirror import split_events
from extender.config.kubernetes import KubernetesSettings

log = logging.getLogger(__name__)


class RequestSource(Protocol):
    """Where the agent's request lives."""

    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        """The node's NodePowerLimit (``None``: there is none) and the resourceVersion to
        watch from."""
        ...

    def wait(self, resource_version: str, timeout_s: int) -> None:
        """Return at the first change after ``resource_version``, or after ``timeout_s``."""
        ...

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        """Replace ``obj``'s status; False when ``obj`` changed or went meanwhile."""
        ...


class KubernetesRequests:
    """:class:`RequestSource` on the API server for the node ``node_name``."""

    def __init__(
        self,
        api_client: Any,
        node_name: str,
        *,
        timeouts: KubernetesSettings = DEFAULT_TIMEOUTS,
    ) -> None:
        from kubernetes import client

        self.api: Any = client.CustomObjectsApi(api_client)
        self.node_name = node_name
        self.timeouts = timeouts

    def fetch(self) -> tuple[dict[str, Any] | None, str]:
        response: Any = self.api.list_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            field_selector=f"metadata.name={self.node_name}",
            _preload_content=False,
            _request_timeout=call_timeout(self.timeouts),
        )
        data = orjson.loads(response.data)
        response.release_conn()
        items = data.get("items") or []
        rv = str((data.get("metadata") or {}).get("resourceVersion") or "")
        return (items[0] if items else None), rv

    def wait(self, resource_version: str, timeout_s: int) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            response: Any = self.api.list_cluster_custom_object(
                GROUP,
                VERSION,
                PLURAL,
                field_selector=f"metadata.name={self.node_name}",
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, timeout_s),
                _preload_content=False,
                _request_timeout=watch_timeout(self.timeouts, timeout_s),
            )
        except ApiException as exc:
            if exc.status == 410:  # expired: the next fetch lists afresh
                return
            raise
        try:
            for event in split_events(response.stream(65536, decode_content=True)):
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED", "ERROR"):
                    return
        finally:
            response.close()
            response.release_conn()

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        meta = obj.get("metadata") or {}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": meta.get("name"), "resourceVersion": meta.get("resourceVersion")},
            "status": status,
        }
        try:
            self.api.replace_cluster_custom_object_status(
                GROUP,
                VERSION,
                PLURAL,
                str(meta.get("name")),
                body,
                _request_timeout=call_timeout(self.timeouts),
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # deleted or changed: the next round sees why
                log.debug("status of NodePowerLimit %s not written: %s", meta.get("name"), exc)
                return False
            raise
        return True
