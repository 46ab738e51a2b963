from fused_mup.cli import main

raise SystemExit(main())
