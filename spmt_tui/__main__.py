from spmt_tui.cli import main

raise SystemExit(main())
