"""``python -m extender.crds``: write every CRD file (``make crds``)."""

from extender.crds.definitions import main

raise SystemExit(main())
