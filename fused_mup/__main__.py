"""``python -m fused_mup`` runs the ``fused-mup`` command."""

from fused_mup.cli import main

raise SystemExit(main())
