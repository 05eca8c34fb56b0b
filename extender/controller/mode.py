"""How much of the companion controller an extender process runs (``powercap serve
--controller``). Its own module, free of heavy imports, so the command line can offer the
choices without loading the extender."""

from __future__ import annotations

from enum import StrEnum


class ControllerMode(StrEnum):
    """What an extender does with an enabled ``controller:`` section.

    * ``run`` — the whole controller in this process: it tracks measured power, feeds the
      ledger and, while it holds its Lease, reshapes and evicts (needs the controller's
      RBAC as well as the extender's);
    * ``track`` — it tracks measured power and feeds the overage of breached domains into
      this extender's ledger, so filter keeps replacements out of them, but takes no Lease,
      writes nothing and exports no controller metric: for an extender beside a separate
      ``powercap controller``, which acts (the shipped manifests);
    * ``off`` — no controller at all.
    """

    RUN = "run"
    TRACK = "track"
    OFF = "off"
