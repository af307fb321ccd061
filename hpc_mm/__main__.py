from hpc_mm.cli import main

raise SystemExit(main())
