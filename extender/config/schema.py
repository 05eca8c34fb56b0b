"""The JSON schema of the Helm chart's values (``charts/powercap/values.schema.json``).

The ``config`` key is the powercap config document (:class:`~extender.config.model.ConfigSpec`),
so its schema comes from the pydantic model: a config that ``powercap serve`` would refuse for
its shape (an unknown key, a cap that is not a number, a negative headroom) fails ``helm
install``, ``helm template`` and ``helm lint`` already, naming the field. The other keys are
the chart's own and are written here by hand.

Helm validates values with a JSON-schema validator that resolves ``$ref`` within the document
only. Pydantic puts the sub-models under ``$defs`` of the config schema; they move to the top
of the values schema as draft-07 ``definitions``, and every ``$ref`` is rewritten to match.
``make chart-schema`` writes the file (``python -m extender.config.schema``);
tests/test_chart_files.py fails when the committed file differs from :func:`values_schema`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from extender.config.model import ConfigSpec

SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
CONFIG_DEFINITION = "PowercapConfig"
# Fields the chart fills in when the document leaves them out (templates/_helpers.tpl).
CHART_FILLED = ("apiVersion", "kind")
VALUES_SCHEMA_PATH = Path("charts") / "powercap" / "values.schema.json"


def _rewrite_refs(node: Any) -> Any:
    """``node`` with every ``#/$defs/X`` reference pointed at ``#/definitions/X``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/definitions/" + value.removeprefix("#/$defs/")
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def config_definitions() -> dict[str, Any]:
    """The config model's schema and its sub-models', as draft-07 ``definitions``; the
    document itself is ``definitions.PowercapConfig``."""
    schema = ConfigSpec.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Any] = _rewrite_refs(schema.pop("$defs", {}))
    document = _rewrite_refs(schema)
    document["required"] = [k for k in document.get("required", []) if k not in CHART_FILLED]
    document["title"] = CONFIG_DEFINITION
    definitions[CONFIG_DEFINITION] = document
    return dict(sorted(definitions.items()))


def _object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if description:
        out["description"] = description
    out["properties"] = properties
    return out


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _enabled(description: str) -> dict[str, Any]:
    return _object({"enabled": {"type": "boolean", "description": description}})


def _count(description: str, minimum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "description": description}


# Free-form Kubernetes fields (resources, security contexts, affinity): checked by the API
# server, which knows their schema; here only their type.
_MAP = {"type": "object"}
_LIST = {"type": "array"}
_PULL_POLICY = {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}
# Kubernetes object names: a namespace is a DNS label, most other names DNS subdomains.
_DNS_LABEL = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_DIGEST = {
    "type": "string",
    "description": "sha256:<hex>; when set, used instead of the tag",
    "pattern": "^(sha256:[0-9a-f]{64})?$",
}


def agent_properties() -> dict[str, Any]:
    """``agent``: the node agent's DaemonSet (`powercap agent`) and what goes with it."""
    return _object(
        {
            "enabled": {"type": "boolean", "description": "the node agent DaemonSet"},
            "image": _object(
                {
                    "repository": _string("empty: image.repository"),
                    "tag": _string("empty: image.tag"),
                    "digest": _DIGEST,
                },
                "the agent's image; empty: the powercap image",
            ),
            "namespace": _string(
                "the agent's namespace (Pod Security privileged)", pattern=_DNS_LABEL
            ),
            "createNamespace": {
                "type": "boolean",
                "description": "template the namespace with its Pod Security labels",
            },
            "nodeSelector": {
                "type": "object",
                "description": "the nodes the agent runs on",
                "additionalProperties": {"type": ["string", "null"]},
            },
            "tolerations": _LIST,
            "runtimeClassName": _string(
                "the RuntimeClass that mounts NVML; empty: the default runtime",
                pattern="^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
            ),
            "priorityClassName": {"type": "string"},
            "restoreOnExit": {
                "type": "boolean",
                "description": "powercap agent --restore-on-exit (else --no-restore-on-exit)",
            },
            "dryRun": {"type": "boolean", "description": "powercap agent --dry-run"},
            "resyncSeconds": {
                "type": "number",
                "minimum": 1,
                "description": "powercap agent --resync, seconds",
            },
            "metricsPort": {
                "type": "integer",
                "minimum": 1,
                "maximum": 65535,
                "description": "the port of /healthz, /readyz and /metrics",
            },
            "resources": _MAP,
            "privileged": {
                "type": "boolean",
                "description": "a privileged container, where CAP_SYS_ADMIN alone is not enough",
            },
            "admissionPolicy": _enabled("each agent writes its own node's NodePowerLimit only"),
            "networkPolicy": _enabled("only Prometheus may reach the agent's metrics port"),
        },
        "the node agent (powercap agent) that applies NodePowerLimits through NVML",
    )


def chart_properties() -> dict[str, Any]:
    """The hand-written part: every key of values.yaml but ``config``."""
    return {
        "image": _object(
            {
                "repository": _string("the powercap image", minLength=1),
                "tag": _string("empty: the chart's appVersion"),
                "digest": _string(
                    "sha256:<hex>; when set, used instead of the tag",
                    pattern="^(sha256:[0-9a-f]{64})?$",
                ),
                "pullPolicy": _PULL_POLICY,
            },
            "the powercap image (the extender and the controller)",
        ),
        "imagePullSecrets": _LIST,
        "scheduler": _object(
            {
                "name": _string(
                    "the schedulerName pods opt in with; also the scheduler's Lease",
                    pattern="^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                ),
                "image": _object(
                    {
                        "repository": _string("the kube-scheduler image", minLength=1),
                        "tag": _string("the kube-scheduler version", minLength=1),
                        "pullPolicy": _PULL_POLICY,
                    }
                ),
                "resources": _MAP,
            }
        ),
        "extender": _object(
            {
                "resources": _MAP,
                "limits": _object(
                    {
                        "maxBodyBytes": _count("powercap serve --max-body-bytes", 1),
                        "maxCandidates": _count("powercap serve --max-candidates", 1),
                        "readTimeout": {
                            "type": "number",
                            "minimum": 0.001,
                            "description": "powercap serve --read-timeout, seconds",
                        },
                        "maxConcurrent": _count("powercap serve --max-concurrent", 1),
                        "maxQueued": _count("powercap serve --max-queued", 0),
                        "maxBinds": _count("powercap serve --max-binds", 1),
                        "inlineMaxBytes": _count("powercap serve --inline-max-bytes", 0),
                    },
                    "the bounds of every verb call",
                ),
                "tls": _object(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "the extender apart, its verbs over mutual TLS",
                        },
                        "secretName": _string("Secret with the certificates", minLength=1),
                        "clientCA": _string(
                            "the Secret's key holding the CA of kube-scheduler's "
                            "client certificate",
                            minLength=1,
                        ),
                    }
                ),
            }
        ),
        "controller": _object(
            {
                "enabled": {"type": "boolean"},
                "dryRun": {
                    "type": "boolean",
                    "description": "decide and report, change nothing (config controller.dryRun)",
                },
                "resources": _MAP,
            }
        ),
        "config": {
            "description": (
                "the powercap config document (kind: PowercapConfig); empty: the example "
                "files/powercap.yaml"
            ),
            "anyOf": [
                {"type": "object", "maxProperties": 0},
                {"$ref": f"#/definitions/{CONFIG_DEFINITION}"},
            ],
        },
        "prometheus": _object(
            {
                "url": _string(
                    "Prometheus base URL; set: the config's power.url (empty: the config's)",
                    pattern="^(https?://.+)?$",
                ),
                "selector": {
                    "type": "object",
                    "description": (
                        "label matchers of the power series; set: the config's power.selector"
                    ),
                    "additionalProperties": {"type": "string"},
                },
            }
        ),
        "profileFiles": {
            "type": "object",
            "description": "PowerProfile files beside the config: file name → document",
            "propertyNames": {"pattern": "^[A-Za-z0-9._-]+\\.ya?ml$"},
            "additionalProperties": {"type": ["object", "string"]},
        },
        "networkPolicy": _enabled("only Prometheus may reach the metrics ports"),
        "admissionPolicy": _enabled("tenants cannot set powercap.io/priority"),
        "monitoring": _object(
            {
                "serviceMonitor": _enabled("a prometheus-operator ServiceMonitor"),
                "prometheusRule": _enabled("a prometheus-operator PrometheusRule"),
                "dashboard": _enabled("the Grafana dashboard ConfigMap"),
                "kubeScheduler": _object(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "kube-scheduler's own metrics on its secure port",
                        },
                        "prometheusServiceAccount": _object(
                            {
                                "name": _string("its name", pattern=_DNS_SUBDOMAIN),
                                "namespace": _string("its namespace", pattern=_DNS_LABEL),
                            },
                            "the ServiceAccount Prometheus scrapes with, granted get /metrics",
                        ),
                    }
                ),
            }
        ),
        "crds": _object(
            {
                "install": {
                    "type": "boolean",
                    "description": "powercap's CustomResourceDefinitions (manifests/crds)",
                },
                "keep": {
                    "type": "boolean",
                    "description": "helm.sh/resource-policy: keep, so uninstall leaves them",
                },
            }
        ),
        "powerResources": _object(
            {
                "create": {
                    "type": "boolean",
                    "description": "the example config's PowerDomains, PowerProfiles and "
                    "PowerPolicies (files/resources.yaml); needs the CRDs installed first",
                },
            }
        ),
        "agent": agent_properties(),
        "podSecurityContext": _MAP,
        "securityContext": _MAP,
        "priorityClassName": {"type": "string"},
        "nodeSelector": _MAP,
        "tolerations": _LIST,
        "affinity": _MAP,
        # Helm passes `global` to every chart (and subchart) whether set or not.
        "global": _MAP,
    }


def values_schema() -> dict[str, Any]:
    """The whole values schema, as committed in ``charts/powercap/values.schema.json``."""
    return {
        "$schema": SCHEMA_DRAFT,
        "title": "powercap chart values",
        "type": "object",
        "additionalProperties": False,
        "properties": chart_properties(),
        "definitions": config_definitions(),
    }


def render() -> str:
    """The file's text: the schema as indented JSON, one trailing newline."""
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema to the path given (default: the chart's, from the repository root)."""
    parser = argparse.ArgumentParser(
        prog="python -m extender.config.schema",
        description="Write the Helm chart's values.schema.json from the config model.",
    )
    parser.add_argument("path", nargs="?", type=Path, default=VALUES_SCHEMA_PATH)
    path: Path = parser.parse_args(argv).path
    path.write_text(render())
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
