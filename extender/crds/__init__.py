"""powercap's CustomResourceDefinitions, generated from the pydantic models.

:mod:`extender.crds.schema` turns a pydantic model into a structural OpenAPI v3 schema;
:mod:`extender.crds.definitions` says, per kind, what the model cannot (names, scope,
printer columns, CEL rules) and writes every ``manifests/crds/<plural>.powercap.io.yaml``
(``make crds``, or ``python -m extender.crds``); a unit test fails when a committed file
is stale.
"""
